//! The shell every page shares: GoCD's dark header with the sections that exist.

use maud::{DOCTYPE, Markup, html};

use crate::domain::user::User;
use crate::web::assets;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Pipelines,
    Agents,
    None,
}

/// A full page for `viewer` (none on an error page). `scripts` are extra assets by name (e.g.
/// `agents.js`). Controls only admins may use carry the class `admin-only`; the stylesheet
/// hides them from others (`data-admin` on the body), so a live fragment is rendered once for
/// every viewer, and the server refuses the request anyway.
pub fn page(
    viewer: Option<&User>,
    title: &str,
    section: Section,
    scripts: &[&str],
    body: Markup,
) -> Markup {
    let admin = viewer.is_some_and(|v| v.admin);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // The Content-Security-Policy allows no eval and no inline style: htmx must
                // use neither.
                meta name="htmx-config" content=r#"{"allowEval":false,"includeIndicatorStyles":false}"#;
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
            body hx-ext="sse" data-admin=(admin) {
                header.site-header {
                    a.brand href="/" { span.logo { "▶" } "ferrocd" }
                    nav {
                        a href="/pipelines" class=[(section == Section::Pipelines).then_some("active")] { "Pipelines" }
                        a href="/agents" class=[(section == Section::Agents).then_some("active")] { "Agents" }
                    }
                    span.live-badge #live-badge data-state="connecting"
                        title="This page updates itself as things change" { "connecting" }
                    @if let Some(user) = viewer.filter(|v| v.signed_in) {
                        div.user-menu {
                            a href="/access_tokens" title="Personal access tokens" { (user.name) }
                            form method="post" action="/auth/logout" {
                                button.link-button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main.page { (body) }
            }
        }
    }
}
