//! Routes and handlers: sign in and out, overview, security mode, password, app
//! passwords, recovery code, lock now, forgot password, sign-up, the stylesheet and 404.
//!
//! Every form carries the session's CSRF token; every POST checks it (in constant time)
//! before anything else happens. Handlers never log a username, password or code.

use crate::html::{self, Msg, Nav, csrf_field, esc, input, input_id, page};
use crate::session::{Auth, SESSION_COOKIE, Session};
use crate::{PanelCtx, Peer, Registration};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use coffer_types::{SecurityMode, SlotId, SlotKind};
use coffer_vault::secret::MIN_NEW_PASSWORD_CHARS;
use coffer_vault::{Password, PasswordError, Purpose, VaultError, normalize_recovery_code};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use zeroize::Zeroizing;

type Ctx = State<Arc<PanelCtx>>;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn router(ctx: Arc<PanelCtx>) -> Router {
    let limit = ctx.config.max_body_bytes;
    Router::new()
        .route("/", get(overview))
        .route("/style.css", get(stylesheet))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/password", get(password_page).post(password))
        .route(
            "/app-passwords",
            get(app_passwords_page).post(app_password_add),
        )
        .route("/app-passwords/revoke", post(app_password_revoke))
        .route("/recovery-code", get(recovery_page).post(recovery_generate))
        .route("/mode", get(mode_page).post(mode))
        .route("/lock", post(lock))
        .route("/forgot", get(forgot_page))
        .route("/forgot/code", post(forgot_code))
        .route("/forgot/reset", post(forgot_reset))
        .route("/register", get(register_page).post(register))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(security_headers))
        .with_state(ctx)
}

/// Headers on every answer: CSP, no sniffing, no referrer, no framing, and no caching of
/// anything but the stylesheet (pages may show a secret once).
async fn security_headers(req: Request, next: Next) -> Response {
    let is_css = req.uri().path() == "/style.css";
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !is_css {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    res
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        html::CSS,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Plumbing: sessions, cookies, forms, answers.

fn peer_ip(peer: Option<Extension<Peer>>) -> IpAddr {
    peer.map(|Extension(Peer(a))| a.ip())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)).ip())
}

fn cookie_id(headers: &HeaderMap) -> Option<String> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            if let Some((k, val)) = part.trim().split_once('=')
                && k == SESSION_COOKIE
                && val.len() == 64
                && val.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Some(val.to_string());
            }
        }
    }
    None
}

fn set_cookie(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict"
    ))
    .expect("hex id is a valid header value")
}

/// The current session, if the cookie names a live one; and whether a cookie was sent.
fn current(ctx: &PanelCtx, headers: &HeaderMap) -> (Option<Arc<Session>>, bool) {
    match cookie_id(headers) {
        Some(id) => (ctx.sessions.get(&id), true),
        None => (None, false),
    }
}

/// A live session for an anonymous page (sign-in, forgot, sign-up), created if needed.
/// The bool says whether a new cookie must be set.
fn anon_session(ctx: &PanelCtx, headers: &HeaderMap, ip: IpAddr) -> (Arc<Session>, bool) {
    match current(ctx, headers).0 {
        Some(s) => (s, false),
        None => (ctx.sessions.create(ip, None), true),
    }
}

fn html_response(status: StatusCode, body: String, cookie: Option<HeaderValue>) -> Response {
    let mut res = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response();
    if let Some(c) = cookie {
        res.headers_mut().insert(header::SET_COOKIE, c);
    }
    res
}

fn redirect(to: &'static str, cookie: Option<HeaderValue>) -> Response {
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    if let Some(c) = cookie {
        res.headers_mut().insert(header::SET_COOKIE, c);
    }
    res
}

/// A urlencoded form; values are wiped when dropped.
struct Form(Vec<(String, Zeroizing<String>)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
                .collect(),
        )
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// A field, or "" if absent.
    fn field(&self, key: &str) -> &str {
        self.get(key).unwrap_or("")
    }
}

// The error is an answer built once per refused request; boxing it buys nothing.
#[allow(clippy::result_large_err)]
/// What a POST found: the live session (checked CSRF), or the answer to give instead.
fn check_post(
    ctx: &PanelCtx,
    headers: &HeaderMap,
    form: &Form,
    ip: IpAddr,
    need_auth: bool,
) -> Result<Arc<Session>, Response> {
    let (s, _) = current(ctx, headers);
    let Some(s) = s else {
        return Err(expired_page(ctx, ip));
    };
    if !s.csrf_ok(form.get("csrf")) {
        return Err(csrf_failed(&s));
    }
    if need_auth && s.auth.is_none() {
        return Err(expired_page(ctx, ip));
    }
    Ok(s)
}

/// The sign-in page with "your session expired", on a fresh anonymous session.
fn expired_page(ctx: &PanelCtx, ip: IpAddr) -> Response {
    let s = ctx.sessions.create(ip, None);
    html_response(
        StatusCode::FORBIDDEN,
        login_html(
            &s,
            &Msg::err(
                "Your session has expired or you are signed out, so nothing was changed. Please sign in again.",
            ),
        ),
        Some(set_cookie(&s.id)),
    )
}

fn csrf_failed(s: &Session) -> Response {
    let nav = s.auth.as_ref().map(|_| Nav {
        csrf: &s.csrf,
        current: "",
    });
    html_response(
        StatusCode::FORBIDDEN,
        page(
            "Form not accepted",
            nav,
            &Msg::err(
                "This form could not be verified (its security token is missing or out of date), so nothing was changed.",
            ),
            "<p>This happens when a form was open for a long time, or was sent from another site. Go back, reload the page and try again.</p>\n<p><a href=\"/\">Go to the start page</a></p>",
        ),
        None,
    )
}

fn internal_error(what: &str, e: &dyn std::fmt::Display) -> Response {
    // Vault and mail errors name objects by opaque id only, never a secret or a username.
    tracing::warn!(error = %e, "panel: {what} failed");
    html_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        page(
            "Something went wrong",
            None,
            &Msg::err(
                "The server could not complete this request. Nothing you typed was lost to anyone; please try again later.",
            ),
            "<p><a href=\"/\">Go to the start page</a></p>",
        ),
        None,
    )
}

/// The signed-in session for a page, or the answer to give instead.
#[allow(clippy::result_large_err)]
fn signed_in(ctx: &PanelCtx, headers: &HeaderMap, ip: IpAddr) -> Result<Arc<Session>, Response> {
    match current(ctx, headers) {
        (Some(s), _) if s.auth.is_some() => Ok(s),
        (_, true) => Err(expired_page(ctx, ip)),
        (_, false) => Err(redirect("/login", None)),
    }
}

fn auth(s: &Session) -> &Auth {
    s.auth.as_ref().expect("checked signed in")
}

fn nav<'a>(s: &'a Session, current: &'a str) -> Option<Nav<'a>> {
    Some(Nav {
        csrf: &s.csrf,
        current,
    })
}

fn password_rule() -> String {
    format!(
        "At least {MIN_NEW_PASSWORD_CHARS} characters; letters, digits, spaces and symbols all count. A few unrelated words make a strong password that is easy to remember."
    )
}

fn password_error(e: &PasswordError) -> String {
    match e {
        PasswordError::TooShort => format!(
            "The new password is too short: it needs at least {MIN_NEW_PASSWORD_CHARS} characters."
        ),
        PasswordError::Empty => "Please type a new password.".into(),
        PasswordError::TooLong => "The new password is too long.".into(),
        PasswordError::ControlCharacter => {
            "The new password contains a control character; please use only printable characters."
                .into()
        }
        PasswordError::NotUtf8 => "The new password is not valid text.".into(),
    }
}

/// Checks two typed new passwords: equal and following the rule.
fn check_new_password(a: &str, b: &str) -> Result<(), String> {
    if a != b {
        return Err("The two new passwords are not the same. Nothing was changed.".into());
    }
    Password::new_account_password(a).map_err(|e| password_error(&e))?;
    Ok(())
}

async fn wait_throttle(ctx: &PanelCtx, name: &str, ip: IpAddr) -> Option<coffer_types::UserId> {
    let user = ctx.mail.vault().user_id(name).ok();
    let delay = ctx.mail.vault().throttle().delay(user.as_ref(), ip);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    user
}

// ---------------------------------------------------------------------------------------
// Sign in and out.

fn login_html(s: &Session, msg: &Msg) -> String {
    let mut body = String::new();
    body.push_str("<form method=\"post\" action=\"/login\">\n");
    body.push_str(&csrf_field(&s.csrf));
    body.push_str(&input("username", "Username", "text", "username", None));
    body.push_str(&input(
        "password",
        "Password",
        "password",
        "current-password",
        Some("Your account password. App passwords work only in mail apps, not here."),
    ));
    body.push_str("<button type=\"submit\">Sign in</button>\n</form>\n");
    body.push_str("<p><a href=\"/forgot\">Forgot your password?</a></p>\n");
    page("Sign in", None, msg, &body)
}

async fn login_page(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let ip = peer_ip(peer);
    if let (Some(s), _) = current(&ctx, &headers)
        && s.auth.is_some()
    {
        return redirect("/", None);
    }
    let (s, new) = anon_session(&ctx, &headers, ip);
    html_response(
        StatusCode::OK,
        login_html(&s, &Msg::None),
        new.then(|| set_cookie(&s.id)),
    )
}

async fn login(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, false) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = form.field("username").trim();
    let password = form.field("password");
    let fail = |status, m: &str| html_response(status, login_html(&s, &Msg::err(m)), None);
    if name.is_empty() || password.is_empty() {
        return fail(
            StatusCode::BAD_REQUEST,
            "Please type your username and your password.",
        );
    }
    let user = wait_throttle(&ctx, name, ip).await;
    match ctx
        .mail
        .vault()
        .login(name, password, Purpose::Account)
        .await
    {
        Ok(unlocked) => {
            let user = *unlocked.user_id();
            unlocked.describe("panel", ip);
            ctx.mail.vault().throttle().succeeded(&user, ip);
            ctx.sessions.remove(&s.id);
            let new = ctx.sessions.create(
                ip,
                Some(Auth {
                    unlocked,
                    user,
                    name: Zeroizing::new(name.to_string()),
                }),
            );
            redirect("/", Some(set_cookie(&new.id)))
        }
        Err(VaultError::KindNotAccepted(SlotKind::AppPassword)) => fail(
            StatusCode::UNAUTHORIZED,
            "That is an app password. App passwords work only in mail apps; sign in here with your account password.",
        ),
        Err(VaultError::KindNotAccepted(SlotKind::RecoveryCode)) => fail(
            StatusCode::UNAUTHORIZED,
            "That is a recovery code. Use it on the \"Forgot your password?\" page to set a new password.",
        ),
        Err(
            VaultError::AuthFailed
            | VaultError::InvalidUsername(_)
            | VaultError::InvalidPassword(_)
            | VaultError::KindNotAccepted(_),
        ) => {
            ctx.mail.vault().throttle().failed(user.as_ref(), ip);
            fail(
                StatusCode::UNAUTHORIZED,
                "Wrong username or password. Please try again.",
            )
        }
        Err(e) => internal_error("sign-in", &e),
    }
}

async fn logout(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, false) {
        Ok(s) => s,
        Err(r) => return r,
    };
    ctx.sessions.remove(&s.id);
    drop(s);
    let fresh = ctx.sessions.create(ip, None);
    html_response(
        StatusCode::OK,
        login_html(&fresh, &Msg::ok("You are signed out.")),
        Some(set_cookie(&fresh.id)),
    )
}

// ---------------------------------------------------------------------------------------
// Overview.

async fn overview(State(ctx): Ctx, peer: Option<Extension<Peer>>, headers: HeaderMap) -> Response {
    let ip = peer_ip(peer);
    let s = match signed_in(&ctx, &headers, ip) {
        Ok(s) => s,
        Err(r) => return r,
    };
    overview_answer(&ctx, &s, Msg::None).await
}

async fn overview_answer(ctx: &PanelCtx, s: &Session, msg: Msg) -> Response {
    let a = auth(s);
    let vault = ctx.mail.vault();
    let account = match vault.store().get_account(&a.user).await {
        Ok(Some(acc)) => acc,
        Ok(None) => return expired_page(ctx, s.addr),
        Err(e) => return internal_error("overview", &e),
    };
    let (used, messages) = match ctx.mail.usage(&a.unlocked).await {
        Ok(u) => u,
        Err(coffer_mail::MailError::Vault(VaultError::Locked(_))) => {
            return expired_page(ctx, s.addr);
        }
        Err(e) => return internal_error("overview", &e),
    };
    let mailboxes = match ctx.mail.list_mailboxes(&a.unlocked).await {
        Ok(m) => m.len(),
        Err(e) => return internal_error("overview", &e),
    };
    let apps = match vault.list_app_passwords(&a.unlocked).await {
        Ok(v) => v,
        Err(VaultError::Locked(_)) => return expired_page(ctx, s.addr),
        Err(e) => return internal_error("overview", &e),
    };
    let has_code = vault.has_recovery_code(&a.user).await.unwrap_or(false);
    let open = vault
        .registry()
        .unlocked()
        .into_iter()
        .find(|u| u.user == a.user);
    let panel_sessions = ctx.sessions.of_user(&a.user);
    let mail_sessions: Vec<_> = vault
        .registry()
        .sessions_of(&a.user)
        .into_iter()
        .filter(|i| i.kind != "panel")
        .collect();

    let mut b = String::new();
    b.push_str("<dl>\n");
    let mode = match account.mode {
        SecurityMode::High => "High: only you can open your mail.",
        SecurityMode::Low => {
            "Low: your provider can restore your mail if you forget your password."
        }
    };
    b.push_str(&format!(
        "<dt>Security mode</dt><dd>{} <a href=\"/mode\">Change</a></dd>\n",
        esc(mode)
    ));
    let quota = if ctx.config.quota_bytes > 0 {
        format!(
            "{} of {} ({}%)",
            html::bytes(used),
            html::bytes(ctx.config.quota_bytes),
            used.saturating_mul(100) / ctx.config.quota_bytes
        )
    } else {
        format!("{} (no limit)", html::bytes(used))
    };
    b.push_str(&format!("<dt>Storage used</dt><dd>{}</dd>\n", esc(&quota)));
    b.push_str(&format!("<dt>Messages</dt><dd>{messages}</dd>\n"));
    b.push_str(&format!("<dt>Mailboxes</dt><dd>{mailboxes}</dd>\n"));
    b.push_str(&format!(
        "<dt>Recovery code</dt><dd>{} <a href=\"/recovery-code\">Manage</a></dd>\n",
        if has_code { "Set" } else { "None yet" }
    ));
    if let Some(o) = &open {
        b.push_str(&format!(
            "<dt>Open sessions</dt><dd>{} (mail apps and this panel), mailbox open for {} min</dd>\n",
            o.sessions,
            o.unlocked_for.as_secs() / 60
        ));
    }
    b.push_str("</dl>\n");

    b.push_str("<h2>App passwords</h2>\n");
    if apps.is_empty() {
        b.push_str("<p>None. <a href=\"/app-passwords\">Create one</a> for each phone or computer that reads your mail.</p>\n");
    } else {
        b.push_str("<table>\n<thead><tr><th scope=\"col\">Label</th><th scope=\"col\">Created</th><th scope=\"col\">Last used</th></tr></thead>\n<tbody>\n");
        for p in &apps {
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&p.label),
                html::date(p.created),
                p.last_used
                    .map(html::date)
                    .unwrap_or_else(|| "never".into())
            ));
        }
        b.push_str(
            "</tbody>\n</table>\n<p><a href=\"/app-passwords\">Manage app passwords</a></p>\n",
        );
    }

    b.push_str("<h2>Mail app sessions</h2>\n");
    if mail_sessions.is_empty() {
        b.push_str("<p>No mail app is connected right now.</p>\n");
    } else {
        b.push_str("<table>\n<thead><tr><th scope=\"col\">Kind</th><th scope=\"col\">Address</th><th scope=\"col\">Connected</th></tr></thead>\n<tbody>\n");
        for i in &mail_sessions {
            let started = i
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(i.kind),
                esc(&i.address.to_string()),
                html::date(started)
            ));
        }
        b.push_str("</tbody>\n</table>\n");
    }

    b.push_str("<h2>Panel sessions</h2>\n<table>\n<thead><tr><th scope=\"col\">Address</th><th scope=\"col\">Signed in</th></tr></thead>\n<tbody>\n");
    for (addr, start) in &panel_sessions {
        b.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>\n",
            esc(&addr.to_string()),
            html::date(*start)
        ));
    }
    b.push_str("</tbody>\n</table>\n");

    b.push_str("<h2>Lock my mailbox now</h2>\n<p>Ends every session of yours, in mail apps and here, and wipes your keys from the server's memory at once. New mail still arrives. You need your password to open your mailbox again.</p>\n");
    b.push_str(&format!(
        "<form method=\"post\" action=\"/lock\">{}<button type=\"submit\" class=\"danger\">Lock my mailbox now</button></form>\n",
        csrf_field(&s.csrf)
    ));
    html_response(
        StatusCode::OK,
        page("Overview", nav(s, "/"), &msg, &b),
        None,
    )
}

// ---------------------------------------------------------------------------------------
// Change password.

fn password_html(s: &Session, msg: &Msg) -> String {
    let mut b = String::new();
    b.push_str("<p>Your mail is not re-encrypted: only the key that your password opens is wrapped again. App passwords and your recovery code keep working; mail apps that use your account password need the new one.</p>\n");
    b.push_str("<form method=\"post\" action=\"/password\">\n");
    b.push_str(&csrf_field(&s.csrf));
    b.push_str(&input(
        "current",
        "Current password",
        "password",
        "current-password",
        None,
    ));
    b.push_str(&input(
        "new",
        "New password",
        "password",
        "new-password",
        Some(&password_rule()),
    ));
    b.push_str(&input(
        "new2",
        "New password again",
        "password",
        "new-password",
        None,
    ));
    b.push_str("<button type=\"submit\">Change password</button>\n</form>\n");
    page("Change password", nav(s, "/password"), msg, &b)
}

async fn password_page(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    match signed_in(&ctx, &headers, peer_ip(peer)) {
        Ok(s) => html_response(StatusCode::OK, password_html(&s, &Msg::None), None),
        Err(r) => r,
    }
}

async fn password(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let a = auth(&s);
    let bad = |m: String| {
        html_response(
            StatusCode::BAD_REQUEST,
            password_html(&s, &Msg::err(m)),
            None,
        )
    };
    let current = form.field("current");
    if current.is_empty() {
        return bad("Please type your current password.".into());
    }
    if let Err(m) = check_new_password(form.field("new"), form.field("new2")) {
        return bad(m);
    }
    if form.field("new") == current {
        return bad(
            "The new password must differ from the current one. Nothing was changed.".into(),
        );
    }
    wait_throttle(&ctx, &a.name, ip).await;
    let vault = ctx.mail.vault();
    let check = match vault.login(&a.name, current, Purpose::Account).await {
        Ok(c) => c,
        Err(
            VaultError::AuthFailed
            | VaultError::KindNotAccepted(_)
            | VaultError::InvalidPassword(_),
        ) => {
            ctx.mail.vault().throttle().failed(Some(&a.user), ip);
            return bad("The current password is wrong. Nothing was changed.".into());
        }
        Err(e) => return internal_error("password change", &e),
    };
    ctx.mail.vault().throttle().succeeded(&a.user, ip);
    match vault.change_password(&check, form.field("new")).await {
        Ok(()) => html_response(
            StatusCode::OK,
            password_html(
                &s,
                &Msg::ok("Your password is changed. Use the new one from now on, in mail apps too."),
            ),
            None,
        ),
        Err(VaultError::SecretInUse) => bad(
            "The new password must differ from your current password, app passwords and recovery code."
                .into(),
        ),
        Err(VaultError::InvalidPassword(e)) => bad(password_error(&e)),
        Err(VaultError::Locked(_)) => expired_page(&ctx, ip),
        Err(e) => internal_error("password change", &e),
    }
}

// ---------------------------------------------------------------------------------------
// App passwords.

async fn app_passwords_html(
    ctx: &PanelCtx,
    s: &Session,
    msg: Msg,
    created: Option<(&str, &str)>,
) -> Response {
    let a = auth(s);
    let apps = match ctx.mail.vault().list_app_passwords(&a.unlocked).await {
        Ok(v) => v,
        Err(VaultError::Locked(_)) => return expired_page(ctx, s.addr),
        Err(e) => return internal_error("app password list", &e),
    };
    let mut b = String::new();
    if let Some((label, secret)) = created {
        b.push_str(&format!(
            "<section aria-labelledby=\"new-app\">\n<h2 id=\"new-app\">New app password for “{}”</h2>\n<p>Type or paste it into the mail app as the password, with your usual username. It is shown <strong>only this once</strong>: Coffer cannot show it again.</p>\n<code class=\"secret\" id=\"app-password\">{}</code>\n</section>\n",
            esc(label),
            esc(secret)
        ));
    }
    b.push_str("<p>An app password lets one phone or computer read your mail without knowing your account password. Revoke it when you lose the device: it stops working for new logins at once.</p>\n");
    b.push_str(
        "<h2>Create an app password</h2>\n<form method=\"post\" action=\"/app-passwords\">\n",
    );
    b.push_str(&csrf_field(&s.csrf));
    b.push_str(&input(
        "label",
        "Label",
        "text",
        "off",
        Some("Which device is it for? For example: laptop, phone. Up to 100 characters."),
    ));
    b.push_str("<button type=\"submit\">Create</button>\n</form>\n");
    b.push_str("<h2>Your app passwords</h2>\n");
    if apps.is_empty() {
        b.push_str("<p>None yet.</p>\n");
    } else {
        b.push_str("<table>\n<thead><tr><th scope=\"col\">Label</th><th scope=\"col\">Created</th><th scope=\"col\">Last used</th><th scope=\"col\"><span class=\"skip\">Action</span></th></tr></thead>\n<tbody>\n");
        for p in &apps {
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" action=\"/app-passwords/revoke\" class=\"inline\">{}<input type=\"hidden\" name=\"slot\" value=\"{}\"><button type=\"submit\" class=\"secondary\" aria-label=\"Revoke {}\">Revoke</button></form></td></tr>\n",
                esc(&p.label),
                html::date(p.created),
                p.last_used.map(html::date).unwrap_or_else(|| "never".into()),
                csrf_field(&s.csrf),
                p.slot_id.to_hex(),
                esc(&p.label),
            ));
        }
        b.push_str("</tbody>\n</table>\n");
    }
    let status = if matches!(msg, Msg::Err(_)) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    html_response(
        status,
        page("App passwords", nav(s, "/app-passwords"), &msg, &b),
        None,
    )
}

async fn app_passwords_page(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    match signed_in(&ctx, &headers, peer_ip(peer)) {
        Ok(s) => app_passwords_html(&ctx, &s, Msg::None, None).await,
        Err(r) => r,
    }
}

async fn app_password_add(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let label = form.field("label").trim();
    if label.is_empty() || label.chars().count() > 100 || label.chars().any(char::is_control) {
        return app_passwords_html(
            &ctx,
            &s,
            Msg::err("Please give a label of 1 to 100 printable characters."),
            None,
        )
        .await;
    }
    match ctx
        .mail
        .vault()
        .add_app_password(&auth(&s).unlocked, label)
        .await
    {
        Ok((_, secret)) => {
            app_passwords_html(
                &ctx,
                &s,
                Msg::ok("App password created."),
                Some((label, &secret)),
            )
            .await
        }
        Err(VaultError::NotAllowed(m)) => app_passwords_html(&ctx, &s, Msg::err(m), None).await,
        Err(VaultError::Locked(_)) => expired_page(&ctx, ip),
        Err(e) => internal_error("app password creation", &e),
    }
}

async fn app_password_revoke(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(slot) = SlotId::from_hex(form.field("slot")) else {
        return app_passwords_html(
            &ctx,
            &s,
            Msg::err("No such app password; nothing was revoked."),
            None,
        )
        .await;
    };
    match ctx
        .mail
        .vault()
        .revoke_app_password(&auth(&s).user, &slot)
        .await
    {
        Ok(true) => {
            app_passwords_html(
                &ctx,
                &s,
                Msg::ok("App password revoked: it no longer opens your mailbox."),
                None,
            )
            .await
        }
        Ok(false) => {
            app_passwords_html(
                &ctx,
                &s,
                Msg::err("No such app password; nothing was revoked."),
                None,
            )
            .await
        }
        Err(e) => internal_error("app password revocation", &e),
    }
}

// ---------------------------------------------------------------------------------------
// Recovery code.

fn recovery_html(s: &Session, has: bool, msg: &Msg, code: Option<&str>) -> String {
    let mut b = String::new();
    if let Some(code) = code {
        b.push_str(&format!(
            "<section aria-labelledby=\"new-code\">\n<h2 id=\"new-code\">Your recovery code</h2>\n<p>Write it down or print it and keep it somewhere safe, away from this device. It is shown <strong>only this once</strong>. Any earlier recovery code no longer works.</p>\n<code class=\"secret\" id=\"recovery-code\">{}</code>\n</section>\n",
            esc(code)
        ));
    }
    b.push_str("<p>A recovery code lets you set a new password if you forget yours, and keep all your mail. It works once. Without it, in high security mode, a forgotten password means nobody can open your old mail.</p>\n");
    b.push_str(&format!(
        "<p>Status: <strong>{}</strong></p>\n",
        if has {
            "you have a recovery code."
        } else {
            "you have no recovery code."
        }
    ));
    b.push_str("<form method=\"post\" action=\"/recovery-code\">\n");
    b.push_str(&csrf_field(&s.csrf));
    b.push_str(&format!(
        "<button type=\"submit\">{}</button>\n</form>\n",
        if has {
            "Make a new recovery code (the old one stops working)"
        } else {
            "Make a recovery code"
        }
    ));
    page("Recovery code", nav(s, "/recovery-code"), msg, &b)
}

async fn recovery_page(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let s = match signed_in(&ctx, &headers, peer_ip(peer)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let has = match ctx.mail.vault().has_recovery_code(&auth(&s).user).await {
        Ok(h) => h,
        Err(e) => return internal_error("recovery code status", &e),
    };
    html_response(
        StatusCode::OK,
        recovery_html(&s, has, &Msg::None, None),
        None,
    )
}

async fn recovery_generate(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match ctx.mail.vault().set_recovery_code(&auth(&s).unlocked).await {
        Ok(code) => html_response(
            StatusCode::OK,
            recovery_html(&s, true, &Msg::ok("New recovery code made."), Some(&code)),
            None,
        ),
        Err(VaultError::Locked(_)) => expired_page(&ctx, ip),
        Err(e) => internal_error("recovery code", &e),
    }
}

// ---------------------------------------------------------------------------------------
// Security mode.

const HIGH_TEXT: &str = "<p><strong>High security.</strong> Only you can open your mail: your password, your app passwords and your recovery code are the only keys. Nobody at your provider can open it, and nobody can make them. If you forget your password and have no recovery code, your old mail can never be opened again; you can start over with an empty mailbox, and the old mail reopens only if you find the old password later.</p>\n";
const LOW_TEXT: &str = "<p><strong>Low security.</strong> As in high security, your mail is locked while you are away. In addition, your provider keeps a recovery key offline (not on the server) that can open your mailbox. If you forget your password, your provider can restore your mail. Anyone who gets that recovery key, or compels your provider to use it, can also open your mail.</p>\n";

async fn mode_html(ctx: &PanelCtx, s: &Session, msg: Msg) -> Response {
    let a = auth(s);
    let account = match ctx.mail.vault().store().get_account(&a.user).await {
        Ok(Some(acc)) => acc,
        Ok(None) => return expired_page(ctx, s.addr),
        Err(e) => return internal_error("security mode", &e),
    };
    let has_key = ctx.mail.vault().config().recovery_key.is_some();
    let mut b = String::new();
    b.push_str(&format!(
        "<p>Your mailbox is in <strong>{} security</strong> mode.</p>\n",
        account.mode.as_str()
    ));
    b.push_str(HIGH_TEXT);
    b.push_str(LOW_TEXT);
    match account.mode {
        SecurityMode::High if has_key => {
            b.push_str("<form method=\"post\" action=\"/mode\">\n");
            b.push_str(&csrf_field(&s.csrf));
            b.push_str("<input type=\"hidden\" name=\"mode\" value=\"low\">\n<button type=\"submit\">Switch to low security</button>\n</form>\n");
        }
        SecurityMode::High => {
            b.push_str("<p>Low security is not offered here: your provider has not set up an offline recovery key, so nobody could restore your mail. Your mailbox stays in high security.</p>\n");
        }
        SecurityMode::Low => {
            b.push_str("<p>Switching to high security deletes your provider's way in at once. Backups of the server taken before the switch still hold it until they are deleted.</p>\n");
            b.push_str("<form method=\"post\" action=\"/mode\">\n");
            b.push_str(&csrf_field(&s.csrf));
            b.push_str("<input type=\"hidden\" name=\"mode\" value=\"high\">\n<button type=\"submit\">Switch to high security</button>\n</form>\n");
        }
    }
    let status = if matches!(msg, Msg::Err(_)) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    html_response(
        status,
        page("Security mode", nav(s, "/mode"), &msg, &b),
        None,
    )
}

async fn mode_page(State(ctx): Ctx, peer: Option<Extension<Peer>>, headers: HeaderMap) -> Response {
    match signed_in(&ctx, &headers, peer_ip(peer)) {
        Ok(s) => mode_html(&ctx, &s, Msg::None).await,
        Err(r) => r,
    }
}

async fn mode(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let target = match form.field("mode") {
        "high" => SecurityMode::High,
        "low" => SecurityMode::Low,
        _ => return mode_html(&ctx, &s, Msg::err("Please choose high or low security.")).await,
    };
    match ctx.mail.vault().set_mode(&auth(&s).unlocked, target).await {
        Ok(()) => {
            let m = match target {
                SecurityMode::High => "You are now in high security mode: only you can open your mail. Backups taken earlier still hold your provider's way in until they are deleted.",
                SecurityMode::Low => "You are now in low security mode: your provider can restore your mail if you forget your password.",
            };
            mode_html(&ctx, &s, Msg::ok(m)).await
        }
        Err(VaultError::NoRecoveryKey) => {
            mode_html(
                &ctx,
                &s,
                Msg::err("Low security is not available: your provider has not set up a recovery key. Nothing was changed."),
            )
            .await
        }
        Err(VaultError::Locked(_)) => expired_page(&ctx, ip),
        Err(e) => internal_error("security mode", &e),
    }
}

// ---------------------------------------------------------------------------------------
// Lock now.

async fn lock(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let user = auth(&s).user;
    // Every node sharing the store hears of it (their sessions end at their next check).
    if ctx.mail.vault().lock_everywhere(&user).await.is_err() {
        ctx.mail.vault().lock(&user);
    }
    ctx.sessions.remove_user(&user);
    drop(s);
    let fresh = ctx.sessions.create(ip, None);
    html_response(
        StatusCode::OK,
        login_html(
            &fresh,
            &Msg::ok(
                "Your mailbox is locked: every session has ended and your keys are wiped from memory. New mail still arrives, sealed for you.",
            ),
        ),
        Some(set_cookie(&fresh.id)),
    )
}

// ---------------------------------------------------------------------------------------
// Forgot password.

fn forgot_html(ctx: &PanelCtx, s: &Session, msg: &Msg) -> String {
    let mut b = String::new();
    b.push_str("<h2>I have my recovery code</h2>\n<p>Set a new password and keep all your mail. The recovery code is used up; make a new one after signing in.</p>\n");
    b.push_str("<form method=\"post\" action=\"/forgot/code\">\n");
    b.push_str(&csrf_field(&s.csrf));
    b.push_str(&input("username", "Username", "text", "username", None));
    b.push_str(&input(
        "code",
        "Recovery code",
        "text",
        "off",
        Some("30 letters and digits; dashes, spaces and capitals do not matter."),
    ));
    b.push_str(&input(
        "new",
        "New password",
        "password",
        "new-password",
        Some(&password_rule()),
    ));
    b.push_str(&input(
        "new2",
        "New password again",
        "password",
        "new-password",
        None,
    ));
    b.push_str("<button type=\"submit\">Set the new password</button>\n</form>\n");

    b.push_str("<h2>I have no recovery code</h2>\n");
    b.push_str("<p><strong>If your mailbox is in low security mode,</strong> your provider can restore it with their offline recovery key: ask them, and you keep all your mail.</p>\n");
    b.push_str("<p><strong>If your mailbox is in high security mode,</strong> nobody can open your old mail without your password. A reset gives you a new, empty mailbox with a new password. Your old mail is not erased: it stays sealed, and reopens if you find the old password later.</p>\n");
    if ctx.config.allow_self_reset {
        b.push_str("<form method=\"post\" action=\"/forgot/reset\">\n");
        b.push_str(&csrf_field(&s.csrf));
        b.push_str(&input_id(
            "reset-username",
            "username",
            "Username",
            "text",
            "username",
            None,
        ));
        b.push_str(&input_id(
            "reset-new",
            "new",
            "New password",
            "password",
            "new-password",
            Some(&password_rule()),
        ));
        b.push_str(&input_id(
            "reset-new2",
            "new2",
            "New password again",
            "password",
            "new-password",
            None,
        ));
        b.push_str("<div class=\"field check\"><input type=\"checkbox\" id=\"confirm\" name=\"confirm\" value=\"yes\" required> <label for=\"confirm\">I understand: my mailbox starts empty, and my old mail stays sealed until I find my old password.</label></div>\n");
        b.push_str("<button type=\"submit\" class=\"danger\">Reset my mailbox</button>\n</form>\n");
    } else {
        b.push_str("<p>Resets are done by your provider on this server: ask them to reset your mailbox.</p>\n");
    }
    b.push_str("<p><a href=\"/login\">Back to sign in</a></p>\n");
    page("Forgot your password?", None, msg, &b)
}

async fn forgot_page(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let (s, new) = anon_session(&ctx, &headers, peer_ip(peer));
    html_response(
        StatusCode::OK,
        forgot_html(&ctx, &s, &Msg::None),
        new.then(|| set_cookie(&s.id)),
    )
}

async fn forgot_code(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, false) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let bad = |status, m: &str| html_response(status, forgot_html(&ctx, &s, &Msg::err(m)), None);
    let name = form.field("username").trim();
    if name.is_empty() {
        return bad(StatusCode::BAD_REQUEST, "Please type your username.");
    }
    let Some(code) = normalize_recovery_code(form.field("code")) else {
        return bad(
            StatusCode::BAD_REQUEST,
            "That is not a recovery code: it has 30 letters and digits. Nothing was changed.",
        );
    };
    if let Err(m) = check_new_password(form.field("new"), form.field("new2")) {
        return bad(StatusCode::BAD_REQUEST, &m);
    }
    let user = wait_throttle(&ctx, name, ip).await;
    let vault = ctx.mail.vault();
    let session = match vault.login(name, &code, Purpose::Recovery).await {
        Ok(x) if x.opened_with() == SlotKind::RecoveryCode => x,
        Ok(_)
        | Err(
            VaultError::AuthFailed
            | VaultError::KindNotAccepted(_)
            | VaultError::InvalidUsername(_)
            | VaultError::InvalidPassword(_),
        ) => {
            ctx.mail.vault().throttle().failed(user.as_ref(), ip);
            return bad(
                StatusCode::UNAUTHORIZED,
                "That recovery code is wrong or was already used, or the username is wrong. Nothing was changed.",
            );
        }
        Err(e) => return internal_error("recovery", &e),
    };
    ctx.mail.vault().throttle().succeeded(session.user_id(), ip);
    match vault.change_password(&session, form.field("new")).await {
        Ok(()) => {
            drop(session);
            html_response(
                StatusCode::OK,
                login_html(
                    &s,
                    &Msg::ok(
                        "Your new password is set and all your mail is kept. The recovery code is used up: sign in and make a new one.",
                    ),
                ),
                None,
            )
        }
        Err(VaultError::SecretInUse) => bad(
            StatusCode::BAD_REQUEST,
            "The new password must differ from your other passwords. Nothing was changed.",
        ),
        Err(e) => internal_error("recovery", &e),
    }
}

async fn forgot_reset(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, false) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let bad = |status, m: &str| html_response(status, forgot_html(&ctx, &s, &Msg::err(m)), None);
    if !ctx.config.allow_self_reset {
        return bad(
            StatusCode::FORBIDDEN,
            "Resets are done by your provider on this server. Nothing was changed.",
        );
    }
    let name = form.field("username").trim();
    if name.is_empty() {
        return bad(StatusCode::BAD_REQUEST, "Please type your username.");
    }
    if form.field("confirm") != "yes" {
        return bad(
            StatusCode::BAD_REQUEST,
            "Please tick the box to confirm that you understand what a reset does. Nothing was changed.",
        );
    }
    if let Err(m) = check_new_password(form.field("new"), form.field("new2")) {
        return bad(StatusCode::BAD_REQUEST, &m);
    }
    let user = wait_throttle(&ctx, name, ip).await;
    match ctx.mail.reset_user(name, form.field("new")).await {
        Ok(unlocked) => {
            let uid = *unlocked.user_id();
            drop(unlocked);
            ctx.sessions.remove_user(&uid);
            html_response(
                StatusCode::OK,
                login_html(
                    &s,
                    &Msg::ok(
                        "Your mailbox is reset: sign in with the new password. Your old mail stays sealed until you find the old password.",
                    ),
                ),
                None,
            )
        }
        Err(coffer_mail::MailError::Vault(VaultError::SecretInUse)) => bad(
            StatusCode::BAD_REQUEST,
            "That password still opens your mailbox, so no reset is needed: sign in with it. Nothing was changed.",
        ),
        Err(coffer_mail::MailError::Vault(
            VaultError::NoSuchUser | VaultError::InvalidUsername(_),
        )) => {
            ctx.mail.vault().throttle().failed(user.as_ref(), ip);
            bad(
                StatusCode::BAD_REQUEST,
                "No mailbox could be reset with that username. Nothing was changed.",
            )
        }
        Err(coffer_mail::MailError::Vault(VaultError::NoRecoveryKey)) => bad(
            StatusCode::BAD_REQUEST,
            "Your mailbox is in low security mode: ask your provider to restore it, and you keep all your mail. Nothing was changed.",
        ),
        Err(e) => internal_error("reset", &e),
    }
}

// ---------------------------------------------------------------------------------------
// Sign-up.

fn register_html(ctx: &PanelCtx, s: &Session, msg: &Msg) -> String {
    if ctx.config.registration == Registration::Closed {
        return page(
            "Sign up",
            None,
            msg,
            "<p>Sign-up is closed on this server: your provider creates accounts.</p>\n<p><a href=\"/login\">Back to sign in</a></p>\n",
        );
    }
    let mut b = String::new();
    b.push_str("<p>Your mailbox starts in high security mode: only you can open it. Make a recovery code right after signing up, so a forgotten password does not lose your mail.</p>\n");
    b.push_str("<form method=\"post\" action=\"/register\">\n");
    b.push_str(&csrf_field(&s.csrf));
    if ctx.config.registration == Registration::Invite {
        b.push_str(&input(
            "invite",
            "Invitation code",
            "text",
            "off",
            Some("The code your provider gave you."),
        ));
    }
    b.push_str(&input(
        "username",
        "Username",
        "text",
        "username",
        Some("Letters, digits, dots, dashes and underscores."),
    ));
    b.push_str(&input(
        "new",
        "Password",
        "password",
        "new-password",
        Some(&password_rule()),
    ));
    b.push_str(&input(
        "new2",
        "Password again",
        "password",
        "new-password",
        None,
    ));
    b.push_str("<button type=\"submit\">Sign up</button>\n</form>\n");
    page("Sign up", None, msg, &b)
}

async fn register_page(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    if ctx.config.registration == Registration::Closed {
        return not_found().await;
    }
    let (s, new) = anon_session(&ctx, &headers, peer_ip(peer));
    html_response(
        StatusCode::OK,
        register_html(&ctx, &s, &Msg::None),
        new.then(|| set_cookie(&s.id)),
    )
}

async fn register(
    State(ctx): Ctx,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if ctx.config.registration == Registration::Closed {
        return not_found().await;
    }
    let ip = peer_ip(peer);
    let form = Form::parse(&body);
    let s = match check_post(&ctx, &headers, &form, ip, false) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let bad = |m: &str| {
        html_response(
            StatusCode::BAD_REQUEST,
            register_html(&ctx, &s, &Msg::err(m)),
            None,
        )
    };
    let name = form.field("username").trim();
    if name.is_empty() {
        return bad("Please choose a username.");
    }
    if let Err(m) = check_new_password(form.field("new"), form.field("new2")) {
        return bad(&m);
    }
    let invite = form.field("invite").trim().to_string();
    let store = ctx.mail.vault().store().clone();
    if ctx.config.registration == Registration::Invite {
        match coffer_mail::invites::is_valid(store.as_ref(), ctx.mail.vault().pepper(), &invite)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                ctx.mail.vault().throttle().failed(None, ip);
                return bad("That invitation code is not valid, or it was used already.");
            }
            Err(e) => return internal_error("sign-up", &e),
        }
    }
    // Sign-ups cost an Argon2id run: the same throttle slows floods from one address.
    let delay = ctx.mail.vault().throttle().delay(None, ip);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match ctx
        .mail
        .create_user(name, form.field("new"), SecurityMode::High)
        .await
    {
        Ok(unlocked) => {
            ctx.mail.vault().throttle().failed(None, ip);
            if ctx.config.registration == Registration::Invite {
                let _ = coffer_mail::invites::consume(
                    store.as_ref(),
                    ctx.mail.vault().pepper(),
                    &invite,
                )
                .await;
            }
            let user = *unlocked.user_id();
            ctx.sessions.remove(&s.id);
            let new = ctx.sessions.create(
                ip,
                Some(Auth {
                    unlocked,
                    user,
                    name: Zeroizing::new(name.to_string()),
                }),
            );
            redirect("/recovery-code", Some(set_cookie(&new.id)))
        }
        Err(coffer_mail::MailError::Vault(VaultError::UserExists)) => {
            bad("That username is taken; please choose another.")
        }
        Err(coffer_mail::MailError::Vault(VaultError::InvalidUsername(_))) => bad(
            "That username cannot be used; please use letters, digits, dots, dashes and underscores.",
        ),
        Err(coffer_mail::MailError::Vault(VaultError::InvalidPassword(e))) => {
            bad(&password_error(&e))
        }
        Err(e) => internal_error("sign-up", &e),
    }
}

// ---------------------------------------------------------------------------------------
// 404.

async fn not_found() -> Response {
    html_response(
        StatusCode::NOT_FOUND,
        page(
            "Page not found",
            None,
            &Msg::None,
            "<p>There is no page at this address.</p>\n<p><a href=\"/\">Go to the start page</a></p>\n",
        ),
        None,
    )
}
