//! The shell every page shares: GoCD's dark header with the sections that exist.

use maud::{DOCTYPE, Markup, html};

use crate::web::assets;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Agents,
    None,
}

/// A full page. `scripts` are extra assets by name (e.g. `agents.js`).
pub fn page(title: &str, section: Section, scripts: &[&str], body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " - ferrocd" }
                link rel="icon" href=(assets::url("favicon.svg")) type="image/svg+xml";
                link rel="stylesheet" href=(assets::url("app.css"));
                script src=(assets::url("htmx.min.js")) {}
                script src=(assets::url("htmx-ext-sse.min.js")) {}
                script src=(assets::url("live.js")) {}
                @for script in scripts {
                    script src=(assets::url(script)) defer {}
                }
            }
            body hx-ext="sse" {
                header.site-header {
                    a.brand href="/" { span.logo { "▶" } "ferrocd" }
                    nav {
                        a href="/agents" class=[(section == Section::Agents).then_some("active")] { "Agents" }
                    }
                    span.live-badge #live-badge data-state="connecting"
                        title="This page updates itself as things change" { "connecting" }
                }
                main.page { (body) }
            }
        }
    }
}
