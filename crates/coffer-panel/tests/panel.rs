//! HTTP-level tests of every panel form over real TLS: the good path and each bad input
//! (wrong current password, mismatched or short new passwords, wrong or used recovery
//! code, expired or missing session, missing or wrong CSRF token, oversized post, unknown
//! path).

mod common;

use coffer_panel::{PanelConfig, Registration};
use coffer_vault::Purpose;
use common::{Browser, Options, PW, server, server_with};
use std::time::Duration;

const NEW_PW: &str = "a brand new passphrase";

#[tokio::test]
async fn headers_cookie_stylesheet_and_404() {
    let s = server().await;
    let mut b = Browser::new(&s);
    let p = b.get("/login").await;
    p.assert(200, "<label for=\"username\">Username</label>");
    assert_eq!(
        p.header("content-security-policy"),
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    assert_eq!(p.header("x-content-type-options"), "nosniff");
    assert_eq!(p.header("referrer-policy"), "no-referrer");
    assert_eq!(p.header("cache-control"), "no-store");
    let cookie = p.header("set-cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!p.body.contains("<script"), "no script on pages");
    assert!(!p.body.contains("style="), "no inline style");

    let css = b.get("/style.css").await;
    assert_eq!(css.status.as_u16(), 200);
    assert!(css.header("content-type").starts_with("text/css"));

    let nf = b.get("/no/such/page").await;
    nf.assert(404, "Page not found");
    assert!(!nf.header("content-security-policy").is_empty());

    // Not signed in: the overview sends the visitor to sign in.
    let mut fresh = Browser::new(&s);
    let o = fresh.get("/").await;
    assert_eq!(o.status.as_u16(), 303);
    assert_eq!(o.header("location"), "/login");
}

#[tokio::test]
async fn sign_in_refusals_and_sign_out() {
    let s = server().await;
    let mut b = Browser::new(&s);

    let p = b
        .submit(
            "/login",
            "/login",
            &[("username", "alice"), ("password", "wrong password")],
        )
        .await;
    p.assert(401, "Wrong username or password");
    let p = b
        .submit(
            "/login",
            "/login",
            &[("username", "nobody"), ("password", PW)],
        )
        .await;
    p.assert(401, "Wrong username or password");
    let p = b
        .submit(
            "/login",
            "/login",
            &[("username", "alice"), ("password", "")],
        )
        .await;
    p.assert(400, "Please type your username and your password");

    // App passwords are refused here, and said so.
    let (_, app) = {
        let u = s
            .mail
            .vault()
            .login("alice", PW, Purpose::Account)
            .await
            .unwrap();
        s.mail.vault().add_app_password(&u, "phone").await.unwrap()
    };
    let p = b
        .submit(
            "/login",
            "/login",
            &[("username", "alice"), ("password", &app)],
        )
        .await;
    p.assert(401, "That is an app password");

    let before = b.cookie.clone();
    b.sign_in("alice", PW).await;
    assert_ne!(b.cookie, before, "the session id changes at sign-in");
    let o = b.get("/").await;
    o.assert(200, "Overview");
    assert!(o.body.contains("High: only you can open your mail."));
    assert!(
        o.body.contains("<dt>Mailboxes</dt><dd>6</dd>"),
        "{}",
        o.body
    );
    assert!(o.body.contains("<dt>Messages</dt><dd>0</dd>"));
    assert!(o.body.contains("phone"), "app passwords listed");
    // The panel session counts as a session of the user in the vault's registry.
    let user = s.mail.vault().user_id("alice").unwrap();
    assert!(s.mail.vault().registry().is_unlocked(&user));
    assert_eq!(s.ctx.signed_in_sessions(), 1);

    let old = b.cookie.clone();
    let p = b.submit("/", "/logout", &[]).await;
    p.assert(200, "You are signed out");
    assert_eq!(s.ctx.signed_in_sessions(), 0);
    // Grace is zero in these tests: signing out wipes the keyring.
    assert!(!s.mail.vault().registry().is_unlocked(&user));
    // The old cookie no longer works.
    b.cookie = old;
    let p = b.get("/").await;
    p.assert(403, "Your session has expired");
}

#[tokio::test]
async fn missing_session_and_csrf_are_refused() {
    let s = server().await;
    let mut b = Browser::new(&s);
    // No cookie at all.
    let p = b
        .post(
            "/login",
            &[("csrf", "x"), ("username", "alice"), ("password", PW)],
        )
        .await;
    p.assert(403, "Your session has expired");
    // A session but no token.
    b.get("/login").await;
    let p = b
        .post("/login", &[("username", "alice"), ("password", PW)])
        .await;
    p.assert(403, "could not be verified");
    // A wrong token.
    let p = b
        .post(
            "/login",
            &[
                ("csrf", &"0".repeat(64)),
                ("username", "alice"),
                ("password", PW),
            ],
        )
        .await;
    p.assert(403, "could not be verified");

    // Signed in: every form checks the token and changes nothing without it.
    b.sign_in("alice", PW).await;
    for (action, fields) in [
        (
            "/password",
            vec![("current", PW), ("new", NEW_PW), ("new2", NEW_PW)],
        ),
        ("/app-passwords", vec![("label", "laptop")]),
        ("/recovery-code", vec![]),
        ("/mode", vec![("mode", "low")]),
        ("/lock", vec![]),
        ("/logout", vec![]),
    ] {
        let mut f = fields.clone();
        f.push(("csrf", "wrong"));
        let p = b.post(action, &f).await;
        p.assert(403, "could not be verified");
    }
    let vault = s.mail.vault();
    assert!(vault.login("alice", PW, Purpose::Account).await.is_ok());
    let u = vault.login("alice", PW, Purpose::Account).await.unwrap();
    assert!(vault.list_app_passwords(&u).await.unwrap().is_empty());
    assert!(!vault.has_recovery_code(u.user_id()).await.unwrap());
    // Still signed in.
    b.get("/").await.assert(200, "Overview");

    // Forms that need a session, posted without one.
    let mut anon = Browser::new(&s);
    let p = anon
        .post(
            "/password",
            &[
                ("csrf", "x"),
                ("current", PW),
                ("new", NEW_PW),
                ("new2", NEW_PW),
            ],
        )
        .await;
    p.assert(403, "Your session has expired");
    // A valid anonymous session is not enough for a signed-in form.
    anon.get("/login").await;
    let p = anon.submit("/login", "/recovery-code", &[]).await;
    p.assert(403, "Your session has expired");
}

#[tokio::test]
async fn change_password_form() {
    let s = server().await;
    let mut b = Browser::new(&s);
    b.sign_in("alice", PW).await;
    let p = b.get("/password").await;
    p.assert(200, "At least 10 characters");

    let p = b
        .submit(
            "/password",
            "/password",
            &[
                ("current", "not my password"),
                ("new", NEW_PW),
                ("new2", NEW_PW),
            ],
        )
        .await;
    p.assert(400, "The current password is wrong");
    let p = b
        .submit(
            "/password",
            "/password",
            &[
                ("current", PW),
                ("new", NEW_PW),
                ("new2", "something else entirely"),
            ],
        )
        .await;
    p.assert(400, "The two new passwords are not the same");
    let p = b
        .submit(
            "/password",
            "/password",
            &[("current", PW), ("new", "short"), ("new2", "short")],
        )
        .await;
    p.assert(400, "at least 10 characters");
    let p = b
        .submit(
            "/password",
            "/password",
            &[("current", PW), ("new", PW), ("new2", PW)],
        )
        .await;
    p.assert(400, "must differ");
    // Nothing changed so far.
    let vault = s.mail.vault();
    assert!(vault.login("alice", PW, Purpose::Account).await.is_ok());

    let p = b
        .submit(
            "/password",
            "/password",
            &[("current", PW), ("new", NEW_PW), ("new2", NEW_PW)],
        )
        .await;
    p.assert(200, "Your password is changed");
    assert!(vault.login("alice", NEW_PW, Purpose::Mail).await.is_ok());
    assert!(vault.login("alice", PW, Purpose::Mail).await.is_err());
    // The panel session goes on.
    b.get("/").await.assert(200, "Overview");
}

#[tokio::test]
async fn app_password_create_list_revoke() {
    let s = server().await;
    let mut b = Browser::new(&s);
    b.sign_in("alice", PW).await;
    let p = b
        .submit("/app-passwords", "/app-passwords", &[("label", "  ")])
        .await;
    p.assert(400, "Please give a label");
    let p = b
        .submit(
            "/app-passwords",
            "/app-passwords",
            &[("label", "laptop <work>")],
        )
        .await;
    p.assert(200, "App password created");
    assert!(p.body.contains("laptop &lt;work&gt;"), "label escaped");
    assert_eq!(p.header("cache-control"), "no-store");
    let secret = p.element_text("app-password");
    assert_eq!(secret.len(), 19, "xxxx-xxxx-xxxx-xxxx");
    let vault = s.mail.vault();
    assert!(vault.login("alice", &secret, Purpose::Mail).await.is_ok());

    // Listed, not shown again.
    let list = b.get("/app-passwords").await;
    list.assert(200, "laptop &lt;work&gt;");
    assert!(!list.body.contains(&secret));
    let o = b.get("/").await;
    assert!(o.body.contains("laptop &lt;work&gt;"));
    assert!(!o.body.contains(&secret));

    // Revoke: a made-up id first, then the real one.
    let p = b
        .submit(
            "/app-passwords",
            "/app-passwords/revoke",
            &[("slot", "nothex")],
        )
        .await;
    p.assert(400, "No such app password");
    let marker = "name=\"slot\" value=\"";
    let i = list.body.find(marker).unwrap() + marker.len();
    let slot = list.body[i..i + 32].to_string();
    let p = b
        .submit(
            "/app-passwords",
            "/app-passwords/revoke",
            &[("slot", &slot)],
        )
        .await;
    p.assert(200, "App password revoked");
    assert!(vault.login("alice", &secret, Purpose::Mail).await.is_err());
    let p = b
        .submit(
            "/app-passwords",
            "/app-passwords/revoke",
            &[("slot", &slot)],
        )
        .await;
    p.assert(400, "No such app password");
}

#[tokio::test]
async fn recovery_code_and_forgot_password() {
    let s = server().await;
    let mut b = Browser::new(&s);
    b.sign_in("alice", PW).await;
    b.get("/recovery-code")
        .await
        .assert(200, "you have no recovery code");
    let p = b.submit("/recovery-code", "/recovery-code", &[]).await;
    p.assert(200, "New recovery code made");
    let first = p.element_text("recovery-code");
    let p = b.submit("/recovery-code", "/recovery-code", &[]).await;
    let second = p.element_text("recovery-code");
    assert_ne!(first, second);
    b.get("/recovery-code")
        .await
        .assert(200, "you have a recovery code");
    b.submit("/", "/logout", &[]).await;

    let mut f = Browser::new(&s);
    f.get("/forgot")
        .await
        .assert(200, "I have my recovery code");
    // Not a code at all.
    let p = f
        .submit(
            "/forgot",
            "/forgot/code",
            &[
                ("username", "alice"),
                ("code", "hello"),
                ("new", NEW_PW),
                ("new2", NEW_PW),
            ],
        )
        .await;
    p.assert(400, "That is not a recovery code");
    // The first code was replaced by the second.
    let p = f
        .submit(
            "/forgot",
            "/forgot/code",
            &[
                ("username", "alice"),
                ("code", &first),
                ("new", NEW_PW),
                ("new2", NEW_PW),
            ],
        )
        .await;
    p.assert(401, "wrong or was already used");
    // Mismatched new passwords.
    let p = f
        .submit(
            "/forgot",
            "/forgot/code",
            &[
                ("username", "alice"),
                ("code", &second),
                ("new", NEW_PW),
                ("new2", "different new words"),
            ],
        )
        .await;
    p.assert(400, "not the same");
    let vault = s.mail.vault();
    assert!(vault.login("alice", PW, Purpose::Account).await.is_ok());

    // Typed loosely: capitals and spaces instead of dashes.
    let typed = second.to_uppercase().replace('-', " ");
    let p = f
        .submit(
            "/forgot",
            "/forgot/code",
            &[
                ("username", "alice"),
                ("code", &typed),
                ("new", NEW_PW),
                ("new2", NEW_PW),
            ],
        )
        .await;
    p.assert(200, "Your new password is set");
    assert!(vault.login("alice", NEW_PW, Purpose::Account).await.is_ok());
    assert!(vault.login("alice", PW, Purpose::Account).await.is_err());
    // Used up.
    let p = f
        .submit(
            "/forgot",
            "/forgot/code",
            &[
                ("username", "alice"),
                ("code", &second),
                ("new", "yet another passphrase"),
                ("new2", "yet another passphrase"),
            ],
        )
        .await;
    p.assert(401, "wrong or was already used");
    let mut b2 = Browser::new(&s);
    b2.sign_in("alice", NEW_PW).await;
    b2.get("/recovery-code")
        .await
        .assert(200, "you have no recovery code");
}

#[tokio::test]
async fn reset_behind_confirmation() {
    // Off by default: the form is not offered and a post is refused.
    let s = server().await;
    let mut b = Browser::new(&s);
    let p = b.get("/forgot").await;
    assert!(!p.body.contains("action=\"/forgot/reset\""));
    let p = b
        .submit(
            "/forgot",
            "/forgot/reset",
            &[
                ("username", "alice"),
                ("new", NEW_PW),
                ("new2", NEW_PW),
                ("confirm", "yes"),
            ],
        )
        .await;
    p.assert(403, "Resets are done by your provider");
    drop(s);

    let s = server_with(Options {
        config: PanelConfig {
            allow_self_reset: true,
            ..PanelConfig::default()
        },
        ..Options::default()
    })
    .await;
    let mut b = Browser::new(&s);
    b.get("/forgot")
        .await
        .assert(200, "action=\"/forgot/reset\"");
    let p = b
        .submit(
            "/forgot",
            "/forgot/reset",
            &[("username", "alice"), ("new", NEW_PW), ("new2", NEW_PW)],
        )
        .await;
    p.assert(400, "tick the box");
    let p = b
        .submit(
            "/forgot",
            "/forgot/reset",
            &[
                ("username", "alice"),
                ("new", PW),
                ("new2", PW),
                ("confirm", "yes"),
            ],
        )
        .await;
    p.assert(400, "still opens your mailbox");
    let p = b
        .submit(
            "/forgot",
            "/forgot/reset",
            &[
                ("username", "alice"),
                ("new", NEW_PW),
                ("new2", NEW_PW),
                ("confirm", "yes"),
            ],
        )
        .await;
    p.assert(200, "Your mailbox is reset");
    let vault = s.mail.vault();
    assert!(vault.login("alice", NEW_PW, Purpose::Account).await.is_ok());
    assert!(vault.login("alice", PW, Purpose::Account).await.is_err());
}

#[tokio::test]
async fn security_mode_without_and_with_recovery_key() {
    let s = server().await;
    let mut b = Browser::new(&s);
    b.sign_in("alice", PW).await;
    let p = b.get("/mode").await;
    p.assert(200, "Low security is not offered here");
    assert!(!p.body.contains("Switch to low security"));
    let p = b.submit("/mode", "/mode", &[("mode", "low")]).await;
    p.assert(400, "Low security is not available");
    let p = b.submit("/mode", "/mode", &[("mode", "medium")]).await;
    p.assert(400, "Please choose high or low");
    drop(s);

    let s = server_with(Options {
        recovery_key: true,
        ..Options::default()
    })
    .await;
    let mut b = Browser::new(&s);
    b.sign_in("alice", PW).await;
    b.get("/mode").await.assert(200, "Switch to low security");
    let p = b.submit("/mode", "/mode", &[("mode", "low")]).await;
    p.assert(200, "You are now in low security mode");
    assert!(p.body.contains("Switch to high security"));
    let user = s.mail.vault().user_id("alice").unwrap();
    let acc = s
        .mail
        .vault()
        .store()
        .get_account(&user)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acc.mode, coffer_types::SecurityMode::Low);
    b.get("/")
        .await
        .assert(200, "Low: your provider can restore");
    let p = b.submit("/mode", "/mode", &[("mode", "high")]).await;
    p.assert(200, "Backups taken earlier");
    let acc = s
        .mail
        .vault()
        .store()
        .get_account(&user)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acc.mode, coffer_types::SecurityMode::High);
}

#[tokio::test]
async fn lock_now_ends_every_session() {
    let s = server().await;
    let mut b = Browser::new(&s);
    b.sign_in("alice", PW).await;
    let mut other = Browser::new(&s);
    other.sign_in("alice", PW).await;
    // A mail-app session of the same user, as IMAP holds it.
    let imap = s
        .mail
        .vault()
        .login("alice", PW, Purpose::Mail)
        .await
        .unwrap();
    let o = b.get("/").await;
    assert!(o.body.contains("Lock my mailbox now"));
    let p = b.submit("/", "/lock", &[]).await;
    p.assert(200, "Your mailbox is locked");
    assert!(imap.is_locked(), "the mail session's keys are wiped");
    assert_eq!(s.ctx.signed_in_sessions(), 0);
    other.get("/").await.assert(403, "Your session has expired");
    // Signing in again works.
    b.sign_in("alice", PW).await;
    b.get("/").await.assert(200, "Overview");
}

#[tokio::test]
async fn sessions_expire() {
    let s = server_with(Options {
        config: PanelConfig {
            session_idle: Duration::from_millis(700),
            ..PanelConfig::default()
        },
        ..Options::default()
    })
    .await;
    let mut b = Browser::new(&s);
    b.sign_in("alice", PW).await;
    let token = b.get("/password").await.csrf();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let p = b
        .post(
            "/password",
            &[
                ("csrf", &token),
                ("current", PW),
                ("new", NEW_PW),
                ("new2", NEW_PW),
            ],
        )
        .await;
    p.assert(403, "Your session has expired");
    assert!(
        s.mail
            .vault()
            .login("alice", PW, Purpose::Account)
            .await
            .is_ok()
    );
    // The expired session's keyring reference is gone.
    assert_eq!(s.ctx.signed_in_sessions(), 0);
}

#[tokio::test]
async fn oversized_post_is_refused() {
    let s = server().await;
    let mut b = Browser::new(&s);
    let token = b.get("/login").await.csrf();
    let mut body = format!("csrf={token}&username=alice&password=").into_bytes();
    body.extend(std::iter::repeat_n(b'a', 20 * 1024));
    let p = b.post_raw("/login", body).await;
    assert_eq!(p.status.as_u16(), 413);
}

#[tokio::test]
async fn failed_sign_ins_are_throttled() {
    let s = server().await;
    let mut b = Browser::new(&s);
    for _ in 0..3 {
        b.submit(
            "/login",
            "/login",
            &[("username", "alice"), ("password", "wrong password")],
        )
        .await
        .assert(401, "Wrong username or password");
    }
    let started = std::time::Instant::now();
    b.submit(
        "/login",
        "/login",
        &[("username", "alice"), ("password", "wrong password")],
    )
    .await
    .assert(401, "Wrong username or password");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn registration_closed_and_open() {
    let s = server().await;
    let mut b = Browser::new(&s);
    b.get("/register").await.assert(404, "Page not found");
    drop(s);

    let s = server_with(Options {
        config: PanelConfig {
            registration: Registration::Open,
            ..PanelConfig::default()
        },
        ..Options::default()
    })
    .await;
    let mut b = Browser::new(&s);
    b.get("/register").await.assert(200, "Sign up");
    let p = b
        .submit(
            "/register",
            "/register",
            &[("username", "alice"), ("new", NEW_PW), ("new2", NEW_PW)],
        )
        .await;
    p.assert(400, "That username is taken");
    let p = b
        .submit(
            "/register",
            "/register",
            &[
                ("username", "carol"),
                ("new", NEW_PW),
                ("new2", "nope nope nope"),
            ],
        )
        .await;
    p.assert(400, "not the same");
    let p = b
        .submit(
            "/register",
            "/register",
            &[("username", "carol"), ("new", NEW_PW), ("new2", NEW_PW)],
        )
        .await;
    assert_eq!(p.status.as_u16(), 303, "{}", p.body);
    assert_eq!(p.header("location"), "/recovery-code");
    b.get("/recovery-code")
        .await
        .assert(200, "Make a recovery code");
    assert!(
        s.mail
            .vault()
            .login("carol", NEW_PW, Purpose::Mail)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn invite_registration_needs_a_valid_unused_code() {
    let s = server_with(Options {
        config: PanelConfig {
            registration: Registration::Invite,
            ..PanelConfig::default()
        },
        ..Options::default()
    })
    .await;
    let store = s.mail.vault().store().clone();
    let code = coffer_mail::invites::create(store.as_ref(), s.mail.vault().pepper())
        .await
        .unwrap();
    let mut b = Browser::new(&s);
    b.get("/register").await.assert(200, "Invitation code");
    let p = b
        .submit(
            "/register",
            "/register",
            &[
                ("invite", "not-a-code"),
                ("username", "dave"),
                ("new", NEW_PW),
                ("new2", NEW_PW),
            ],
        )
        .await;
    p.assert(400, "not valid");
    assert!(
        s.mail.vault().find_user("dave").await.is_err(),
        "no account without a code"
    );
    let p = b
        .submit(
            "/register",
            "/register",
            &[
                ("invite", &code),
                ("username", "dave"),
                ("new", NEW_PW),
                ("new2", NEW_PW),
            ],
        )
        .await;
    assert_eq!(p.status.as_u16(), 303, "{}", p.body);
    assert!(
        s.mail
            .vault()
            .login("dave", NEW_PW, Purpose::Mail)
            .await
            .is_ok()
    );
    // The code is used up.
    let mut other = Browser::new(&s);
    other.get("/register").await.assert(200, "Invitation code");
    let p = other
        .submit(
            "/register",
            "/register",
            &[
                ("invite", &code),
                ("username", "erin"),
                ("new", NEW_PW),
                ("new2", NEW_PW),
            ],
        )
        .await;
    p.assert(400, "used already");
}

#[tokio::test]
async fn overview_lists_mail_app_sessions_with_address() {
    let s = server().await;
    // A mail app's session (the IMAP server describes its sessions the same way).
    let imap = s
        .mail
        .vault()
        .login("alice", PW, Purpose::Mail)
        .await
        .unwrap();
    imap.describe("IMAP", "198.51.100.7".parse().unwrap());
    let mut b = Browser::new(&s);
    b.sign_in("alice", PW).await;
    let p = b.get("/").await;
    p.assert(200, "Mail app sessions");
    assert!(p.body.contains("198.51.100.7"), "{}", p.body);
    drop(imap);
    let p = b.get("/").await;
    assert!(
        !p.body.contains("198.51.100.7"),
        "a closed session is no longer listed"
    );
    p.assert(200, "No mail app is connected");
}

#[tokio::test]
async fn shutdown_ends_panel_sessions() {
    let s = server().await;
    let mut b = Browser::new(&s);
    b.sign_in("alice", PW).await;
    let user = s.mail.vault().user_id("alice").unwrap();
    assert!(s.mail.vault().registry().is_unlocked(&user));
    s.stop.send(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.ctx.signed_in_sessions() > 0 {
        assert!(std::time::Instant::now() < deadline, "sessions ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Grace is zero in these tests: the keyring is wiped with the last session.
    assert!(!s.mail.vault().registry().is_unlocked(&user));
}
