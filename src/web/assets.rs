//! Static files, embedded in the binary. Their URLs carry a hash of their content, so they
//! can be cached for a year and still change the moment a new build ships.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::web::auth::Credential;
use crate::web::routes::Routes;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "htmx.min.js",
        content_type: "text/javascript",
        body: include_bytes!("../../assets/htmx.min.js"),
    },
    Asset {
        name: "htmx-ext-sse.min.js",
        content_type: "text/javascript",
        body: include_bytes!("../../assets/htmx-ext-sse.min.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css",
        body: include_bytes!("../../assets/app.css"),
    },
    Asset {
        name: "agents.js",
        content_type: "text/javascript",
        body: include_bytes!("../../assets/agents.js"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript",
        body: include_bytes!("../../assets/dashboard.js"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript",
        body: include_bytes!("../../assets/console.js"),
    },
    Asset {
        name: "durations.js",
        content_type: "text/javascript",
        body: include_bytes!("../../assets/durations.js"),
    },
    Asset {
        name: "live.js",
        content_type: "text/javascript",
        body: include_bytes!("../../assets/live.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../assets/favicon.svg"),
    },
];

/// Eight hex digits of each asset's SHA-256, computed once.
static VERSIONS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| hex::encode(&Sha256::digest(a.body)[..4]))
        .collect()
});

/// The URL to link an asset by, e.g. `/assets/app.css?v=1a2b3c4d`.
pub fn url(name: &str) -> String {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => format!("/assets/{name}?v={}", VERSIONS[i]),
        None => format!("/assets/{name}"),
    }
}

pub fn router() -> Routes {
    Routes::new().get("/assets/{name}", Credential::None, serve)
}

async fn serve(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            asset.body,
        )
            .into_response(),
        None => Error::NotFound(format!("no asset named {name}")).into_response(),
    }
}
