//! HTML building blocks: escaping, the page layout, messages, and the stylesheet. Pages
//! carry no inline script or style, so the Content-Security-Policy can forbid both.

use std::fmt::Write;

/// Escapes text for HTML element content and double-quoted attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A message shown above a page's content.
pub(crate) enum Msg {
    None,
    Ok(String),
    Err(String),
}

impl Msg {
    pub fn ok(s: impl Into<String>) -> Msg {
        Msg::Ok(s.into())
    }
    pub fn err(s: impl Into<String>) -> Msg {
        Msg::Err(s.into())
    }
    fn render(&self) -> String {
        match self {
            Msg::None => String::new(),
            Msg::Ok(s) => format!("<p class=\"msg ok\" role=\"status\">{}</p>\n", esc(s)),
            Msg::Err(s) => format!("<p class=\"msg err\" role=\"alert\">{}</p>\n", esc(s)),
        }
    }
}

/// The navigation of a signed-in user.
pub(crate) struct Nav<'a> {
    pub csrf: &'a str,
    pub current: &'a str,
}

const LINKS: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/mode", "Security mode"),
    ("/password", "Password"),
    ("/app-passwords", "App passwords"),
    ("/recovery-code", "Recovery code"),
];

/// A whole page. `nav` is given when the user is signed in.
pub(crate) fn page(title: &str, nav: Option<Nav<'_>>, msg: &Msg, body: &str) -> String {
    let mut h = String::with_capacity(4096 + body.len());
    h.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<meta name=\"referrer\" content=\"no-referrer\">\n");
    let _ = writeln!(h, "<title>{} · Coffer</title>", esc(title));
    h.push_str("<link rel=\"stylesheet\" href=\"/style.css\">\n</head>\n<body>\n");
    h.push_str("<a class=\"skip\" href=\"#main\">Skip to content</a>\n");
    h.push_str("<header>\n<p class=\"brand\">Coffer</p>\n");
    if let Some(nav) = &nav {
        h.push_str("<nav aria-label=\"Main\">\n<ul>\n");
        for (href, label) in LINKS {
            if *href == nav.current {
                let _ = writeln!(
                    h,
                    "<li><a href=\"{href}\" aria-current=\"page\">{label}</a></li>"
                );
            } else {
                let _ = writeln!(h, "<li><a href=\"{href}\">{label}</a></li>");
            }
        }
        h.push_str("</ul>\n</nav>\n");
        let _ = writeln!(
            h,
            "<form method=\"post\" action=\"/logout\" class=\"signout\">{}<button type=\"submit\" class=\"link\">Sign out</button></form>",
            csrf_field(nav.csrf)
        );
    }
    h.push_str("</header>\n<main id=\"main\">\n");
    let _ = writeln!(h, "<h1>{}</h1>", esc(title));
    h.push_str(&msg.render());
    h.push_str(body);
    h.push_str("\n</main>\n</body>\n</html>\n");
    h
}

pub(crate) fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// A labelled text or password input whose id is its name.
pub(crate) fn input(
    name: &str,
    label: &str,
    kind: &str,
    autocomplete: &str,
    hint: Option<&str>,
) -> String {
    input_id(name, name, label, kind, autocomplete, hint)
}

/// A labelled text or password input with its own element id (for a second form on a
/// page using the same field names).
pub(crate) fn input_id(
    id: &str,
    name: &str,
    label: &str,
    kind: &str,
    autocomplete: &str,
    hint: Option<&str>,
) -> String {
    let (hint_html, described) = match hint {
        Some(t) => (
            format!("<p class=\"hint\" id=\"{id}-hint\">{}</p>", esc(t)),
            format!(" aria-describedby=\"{id}-hint\""),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "<div class=\"field\"><label for=\"{id}\">{}</label>{hint_html}<input id=\"{id}\" name=\"{name}\" type=\"{kind}\" autocomplete=\"{autocomplete}\" required{described}></div>\n",
        esc(label)
    )
}

/// Bytes as a short human figure (binary units).
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

/// The stylesheet: readable type, strong contrast (text #1a1a1a on #fff, links #0b4f9c),
/// visible focus rings, one column that fits a phone.
pub(crate) const CSS: &str = r#"*,*::before,*::after{box-sizing:border-box}
html{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:100%;line-height:1.5;color:#1a1a1a;background:#f4f4f2}
body{margin:0}
.skip{position:absolute;left:-999px;top:0;background:#fff;padding:.5rem 1rem}
.skip:focus{left:.5rem;top:.5rem;z-index:10}
header{background:#14325c;color:#fff;padding:.75rem 1rem;display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1.5rem}
header .brand{font-weight:700;font-size:1.25rem;margin:0}
header nav ul{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.25rem 1rem}
header a,header .link{color:#fff}
header a[aria-current=page]{font-weight:700;text-decoration-thickness:3px}
header .signout{margin-left:auto}
main{max-width:42rem;margin:0 auto;padding:1rem;background:#fff;min-height:60vh}
h1{font-size:1.6rem;margin:.5rem 0 1rem}
h2{font-size:1.25rem;margin:1.5rem 0 .5rem}
a{color:#0b4f9c}
:focus-visible{outline:3px solid #c25e00;outline-offset:2px}
.field{margin:0 0 1rem}
label{display:block;font-weight:600;margin-bottom:.25rem}
.hint{margin:0 0 .25rem;color:#444;font-size:.95rem}
input[type=text],input[type=password]{width:100%;max-width:28rem;font:inherit;padding:.5rem;border:2px solid #555;border-radius:4px;background:#fff;color:#1a1a1a}
.check label{display:inline;font-weight:400}
button{font:inherit;padding:.55rem 1.1rem;border-radius:4px;border:2px solid #14325c;background:#14325c;color:#fff;cursor:pointer}
button.secondary{background:#fff;color:#14325c}
button.danger{background:#a4161a;border-color:#a4161a}
button.link{background:none;border:none;padding:0;text-decoration:underline;color:inherit}
.msg{padding:.75rem 1rem;border-radius:4px;border-left:6px solid}
.msg.ok{background:#e7f4ea;border-color:#1e6b34}
.msg.err{background:#fbeaea;border-color:#a4161a}
.secret{display:block;font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:1.35rem;letter-spacing:.08em;padding:.75rem;background:#f4f4f2;border:2px dashed #555;border-radius:4px;user-select:all;word-break:break-all;margin:.5rem 0 1rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.4rem .5rem;border-bottom:1px solid #ccc;vertical-align:top}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}
dt{font-weight:600}
dd{margin:0}
.inline{display:inline}
@media (max-width:30rem){dl{grid-template-columns:1fr}dd{margin-bottom:.5rem}main{padding:.75rem}}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(bytes(10), "10 bytes");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
