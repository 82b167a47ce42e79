//! The page frame and the pieces pages share: navigation, badges, JSON blocks (large values
//! folded), live regions, empty and error states.

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::UiError;
use super::session::{CSRF_FIELD, Session, csrf_input};

/// The navigation, in order: (path, label).
const NAV: [(&str, &str); 7] = [
    ("/ui", "Overview"),
    ("/ui/jobs", "Jobs"),
    ("/ui/workflows", "Workflows"),
    ("/ui/dlq", "Dead letters"),
    ("/ui/workers", "Workers"),
    ("/ui/plugins", "Plugins"),
    ("/ui/config", "Config"),
];

/// A JSON value pretty-printed is folded (in a `<details>`) past this many bytes.
const FOLD_BYTES: usize = 2048;

fn head(title: &str) -> Markup {
    html! {
        (DOCTYPE)
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        // No inline styles from htmx: the content security policy allows none.
        meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false}"#;
        title { (title) " · Coretex" }
        link rel="stylesheet" href="/ui/assets/ui.css";
        script src="/ui/assets/htmx.min.js" defer {}
        script src="/ui/assets/ui.js" defer {}
    }
}

/// A page of the dashboard: `active` is the navigation entry it belongs to.
pub fn page(title: &str, active: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        html lang="en" {
            head { (head(title)) }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/ui" { "Coretex" }
                    nav aria-label="Main" {
                        ul {
                            @for (href, label) in NAV {
                                li {
                                    @if href == active {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(s) = session {
                        div class="who" {
                            span id="caller" {
                                @match s.caller.tenant() {
                                    Some(t) => { "tenant " strong { (t) } },
                                    None => { "admin" },
                                }
                            }
                            @if s.key.is_some() {
                                form method="post" action="/ui/sign-out" {
                                    (csrf_input(s))
                                    button type="submit" class="link" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn error_page(e: &UiError) -> Markup {
    let title = match e.status.as_u16() {
        404 => "Not found".to_string(),
        403 => "Forbidden".to_string(),
        s => format!("Error {s}"),
    };
    page(
        &title,
        "",
        None,
        html! {
            div class="error" role="alert" {
                p { (e.detail) }
                @if !e.fields.is_empty() {
                    ul {
                        @for (f, m) in &e.fields {
                            li { code { (f) } " " (m) }
                        }
                    }
                }
            }
            p { a href="/ui" { "Back to the overview" } }
        },
    )
}

pub fn sign_in(nonce: &str, next: Option<&str>, open: bool, message: Option<&str>) -> Markup {
    page(
        "Sign in",
        "/ui/sign-in",
        None,
        html! {
            @if let Some(m) = message {
                div class="error" role="alert" { p { (m) } }
            }
            @if open {
                p { "This host has no API keys: the dashboard is open (on loopback only). "
                    a href="/ui" { "Go to the overview" } }
            } @else {
                form method="post" action="/ui/sign-in" class="card narrow" {
                    input type="hidden" name=(CSRF_FIELD) value=(nonce);
                    @if let Some(n) = next { input type="hidden" name="next" value=(n); }
                    label for="key" { "API key (admin or tenant)" }
                    input type="password" id="key" name="key" required autocomplete="current-password" autofocus;
                    button type="submit" { "Sign in" }
                    p class="hint" { "The key is kept in an HttpOnly cookie of this dashboard; a tenant key sees only its tenant." }
                }
            }
        },
    )
}

/// A job state or run/step status as a coloured badge.
pub fn badge(state: &str) -> Markup {
    html! { span class=(format!("badge b-{}", state.to_ascii_lowercase())) { (state) } }
}

/// A JSON value, pretty-printed; past [`FOLD_BYTES`] folded behind its size.
pub fn json_block(v: &Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    if text.len() > FOLD_BYTES {
        html! {
            details class="json" {
                summary { "JSON, " (text.len()) " bytes — show" }
                pre { code { (text) } }
            }
        }
    } else {
        html! { pre class="json" { code { (text) } } }
    }
}

/// A part of the page that refreshes itself from `url` when a job event arrives (and every few
/// seconds, for changes no event announces): htmx fetches the page and swaps in the element of
/// the same id.
pub fn live(id: &str, url: &str, body: Markup) -> Markup {
    html! {
        div id=(id) data-live hx-get=(url) hx-select=(format!("#{id}")) hx-target="this"
            hx-swap="outerHTML" hx-trigger="coretex:job from:body throttle:500ms, every 3s" {
            (body)
        }
    }
}

pub fn empty(text: &str) -> Markup {
    html! { p class="empty" { (text) } }
}

/// A string field of a JSON object, or "".
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The items of a `{items, next_cursor}` page.
pub fn items(v: &Value) -> &[Value] {
    v.get("items")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A definition list of the (label, value) pairs whose value is not empty.
pub fn facts(rows: &[(&str, Markup)]) -> Markup {
    html! {
        dl class="facts" {
            @for (k, v) in rows {
                @if !v.0.is_empty() {
                    dt { (k) } dd { (v) }
                }
            }
        }
    }
}

/// A link to a job's page.
pub fn job_link(id: &str) -> Markup {
    html! { a href=(format!("/ui/jobs/{}", super::api::seg(id))) { code { (id) } } }
}
