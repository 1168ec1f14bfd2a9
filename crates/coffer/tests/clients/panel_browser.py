#!/usr/bin/env python3
"""End-to-end test of the control panel in a real browser (issue 5).

Drives Debian's Chromium (/usr/bin/chromium, /usr/bin/chromedriver) headless through
Selenium, with JavaScript disabled, against a running `coffer serve`; checks every effect
on the IMAP side with Python's imaplib (plaintext LOGIN on loopback).

Usage:
  panel_browser.py PANEL_URL IMAP_PORT USER PASSWORD WORKDIR SCREENSHOT_DIR

Every wait is bounded; the browser is quit in `finally`. Prints "step: ..." lines as it
goes and exits 1 with "FAILED: ..." on the first failed check.
"""

import imaplib
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 30  # seconds, for any single page or element
MARKER = "coffer-panel-browser-marker-7f3a"


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def step(msg):
    print(f"step: {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# IMAP (plain IMAP port, LOGIN allowed on loopback).


def imap_connect(port):
    return imaplib.IMAP4("127.0.0.1", port, timeout=30)


def imap_login_ok(port, user, password):
    """True if LOGIN succeeds (then logs out), False if the server answers NO."""
    imap = imap_connect(port)
    try:
        imap.login(user, password)
    except imaplib.IMAP4.error:
        try:
            imap.logout()
        except Exception:
            pass
        return False
    imap.logout()
    return True


def imap_append(port, user, password):
    imap = imap_connect(port)
    try:
        imap.login(user, password)
        msg = (
            "From: alice@localhost\r\nTo: {u}@localhost\r\nSubject: before the panel\r\n"
            "Message-ID: <panel-browser@localhost>\r\n\r\n{m}\r\n"
        ).format(u=user, m=MARKER)
        typ, data = imap.append("INBOX", None, None, msg.encode())
        check(typ == "OK", f"APPEND answered {typ} {data}")
    finally:
        imap.logout()


def imap_read_marker(port, user, password):
    imap = imap_connect(port)
    try:
        imap.login(user, password)
        typ, _ = imap.select("INBOX")
        check(typ == "OK", "SELECT INBOX failed")
        typ, data = imap.uid("SEARCH", None, "ALL")
        check(typ == "OK" and data[0], f"UID SEARCH found nothing: {data}")
        uid = data[0].split()[0]
        typ, data = imap.uid("FETCH", uid, "(BODY.PEEK[])")
        check(typ == "OK", f"FETCH answered {typ}")
        body = b"".join(p[1] for p in data if isinstance(p, tuple))
        check(MARKER.encode() in body, f"old message not readable: {body[:200]!r}")
    finally:
        imap.logout()


# ---------------------------------------------------------------------------------------
# Browser.


def make_driver(workdir):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--ignore-certificate-errors",
        "--window-size=1280,900",
        f"--user-data-dir={os.path.join(workdir, 'chromium-profile')}",
    ]:
        options.add_argument(flag)
    # No JavaScript at all: every flow must work without it.
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2}
    )
    service = Service(
        executable_path="/usr/bin/chromedriver",
        log_output=os.path.join(workdir, "chromedriver.log"),
    )
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_window_size(1280, 900)
    return driver


class Panel:
    def __init__(self, driver, base, shots):
        self.d = driver
        self.base = base.rstrip("/")
        self.shots = shots

    def wait(self, cond, what):
        try:
            return WebDriverWait(self.d, WAIT).until(cond)
        except TimeoutException:
            raise Failed(f"timed out waiting for {what}; page:\n{self.page_text()}")

    def page_text(self):
        try:
            return self.d.find_element(By.TAG_NAME, "body").text
        except Exception as e:
            return f"(no page text: {e})"

    def go(self, path):
        self.d.get(self.base + path)
        self.wait(EC.presence_of_element_located((By.TAG_NAME, "h1")), f"page {path}")

    def h1(self):
        return self.d.find_element(By.TAG_NAME, "h1").text

    def expect_h1(self, title):
        h = self.h1()
        check(h == title, f"expected page {title!r}, got {h!r}:\n{self.page_text()}")

    def msg(self, kind):
        """The text of the page's message of class `kind` ("ok" or "err")."""
        els = self.d.find_elements(By.CSS_SELECTOR, f"p.msg.{kind}")
        check(els, f"no {kind} message on the page:\n{self.page_text()}")
        return els[0].text

    def expect_msg(self, kind, text):
        m = self.msg(kind)
        check(text in m, f"expected {kind} message containing {text!r}, got {m!r}")

    def expect_text(self, text):
        t = self.page_text()
        check(text in t, f"expected {text!r} on the page:\n{t}")

    def fill(self, field_id, value):
        el = self.d.find_element(By.ID, field_id)
        el.clear()
        el.send_keys(value)

    def click_and_load(self, element):
        """Clicks a submit button and waits until the next page has replaced this one."""
        old = self.d.find_element(By.TAG_NAME, "html").id
        element.click()

        # A new document has a new <html> element. While the old one is being replaced,
        # chromedriver may answer with any kind of error ("stale element", "node does not
        # belong to the document"): those mean "not yet", within the bounded wait.
        def loaded(d):
            try:
                html = d.find_element(By.TAG_NAME, "html")
                return html.id != old and d.find_elements(By.TAG_NAME, "h1")
            except WebDriverException:
                return False

        self.wait(loaded, "the next page after a form post")

    def button(self, text):
        xp = f"//button[normalize-space(.)={xpath_str(text)}]"
        els = self.d.find_elements(By.XPATH, xp)
        check(els, f"no button {text!r} on the page:\n{self.page_text()}")
        return els[0]

    def press(self, text):
        self.click_and_load(self.button(text))

    def shot(self, name):
        path = os.path.join(self.shots, name)
        check(self.d.save_screenshot(path), f"screenshot {path} not saved")
        step(f"screenshot {path}")

    def sign_in(self, user, password):
        self.go("/login")
        self.expect_h1("Sign in")
        self.fill("username", user)
        self.fill("password", password)
        self.press("Sign in")


def xpath_str(s):
    if '"' not in s:
        return f'"{s}"'
    return "concat(" + ", '\"', ".join(f'"{p}"' for p in s.split('"')) + ")"


def run(driver, base, imap_port, user, pw, workdir, shots):
    p = Panel(driver, base, shots)

    step("JavaScript is off in this browser")
    probe = os.path.join(workdir, "js-probe.html")
    with open(probe, "w") as f:
        f.write("<title>js-off</title><script>document.title = 'js-on';</script><h1>x</h1>")
    driver.get("file://" + probe)
    time.sleep(0.3)
    check(driver.title == "js-off", f"JavaScript ran (title {driver.title!r})")

    step("a message appended over IMAP before the panel is used")
    imap_append(imap_port, user, pw)

    step("sign-in page; a wrong password shows an error")
    p.go("/login")
    p.expect_h1("Sign in")
    p.shot("sign-in.png")
    p.fill("username", user)
    p.fill("password", "not the password at all")
    p.press("Sign in")
    p.expect_h1("Sign in")
    p.expect_msg("err", "Wrong username or password")

    step("sign in")
    p.sign_in(user, pw)
    p.expect_h1("Overview")
    p.expect_text("High: only you can open your mail.")
    p.expect_text("Messages\n1")
    p.shot("overview.png")

    step("security mode: high -> low")
    p.go("/mode")
    p.expect_h1("Security mode")
    p.expect_text("Your mailbox is in high security mode.")
    p.press("Switch to low security")
    p.expect_h1("Security mode")
    p.expect_msg("ok", "You are now in low security mode")
    p.expect_text("Your mailbox is in low security mode.")
    p.expect_text("Backups of the server taken before the switch still hold it")
    p.shot("security-mode.png")
    p.go("/")
    p.expect_text("Low: your provider can restore your mail if you forget your password.")

    step("security mode: low -> high")
    p.go("/mode")
    p.press("Switch to high security")
    p.expect_msg("ok", "You are now in high security mode")
    p.expect_msg("ok", "Backups taken earlier still hold")
    p.expect_text("Your mailbox is in high security mode.")
    p.button("Switch to low security")  # offered again

    step("change password; IMAP: new works, old fails")
    pw2 = pw + " changed in the panel"
    p.go("/password")
    p.expect_h1("Change password")
    p.fill("current", pw)
    p.fill("new", pw2)
    p.fill("new2", pw2)
    p.press("Change password")
    p.expect_msg("ok", "Your password is changed")
    check(imap_login_ok(imap_port, user, pw2), "IMAP LOGIN with the new password failed")
    check(not imap_login_ok(imap_port, user, pw), "IMAP LOGIN with the old password worked")

    step("app password: create, use over IMAP, revoke, refused")
    p.go("/app-passwords")
    p.expect_h1("App passwords")
    p.fill("label", "phone")
    p.press("Create")
    p.expect_msg("ok", "App password created.")
    p.expect_text("New app password for “phone”")
    app = driver.find_element(By.ID, "app-password").text.strip()
    check(len(app) >= 16, f"app password looks wrong: {app!r}")
    p.shot("app-passwords.png")
    check(imap_login_ok(imap_port, user, app), "IMAP LOGIN with the app password failed")
    revoke = driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Revoke phone']")
    check(revoke, f"no Revoke button for 'phone':\n{p.page_text()}")
    p.click_and_load(revoke[0])
    p.expect_msg("ok", "App password revoked")
    p.expect_text("None yet.")
    check(
        not imap_login_ok(imap_port, user, app),
        "IMAP LOGIN with the revoked app password worked",
    )

    step("recovery code: generate, sign out, forgot password with the code")
    p.go("/recovery-code")
    p.expect_h1("Recovery code")
    p.expect_text("you have no recovery code.")
    p.press("Make a recovery code")
    p.expect_msg("ok", "New recovery code made.")
    code = driver.find_element(By.ID, "recovery-code").text.strip()
    check(len(code) >= 30, f"recovery code looks wrong: {code!r}")
    p.press("Sign out")
    p.expect_h1("Sign in")
    p.expect_msg("ok", "You are signed out.")
    p.go("/")
    p.expect_h1("Sign in")  # signed out for real
    p.go("/forgot")
    p.expect_h1("Forgot your password?")
    pw3 = "recovered with the code, a third password"
    p.fill("username", user)
    p.fill("code", code)
    p.fill("new", pw3)
    p.fill("new2", pw3)
    p.press("Set the new password")
    p.expect_h1("Sign in")
    p.expect_msg("ok", "Your new password is set and all your mail is kept")
    imap_read_marker(imap_port, user, pw3)
    check(not imap_login_ok(imap_port, user, pw2), "IMAP LOGIN with the forgotten password worked")

    step("lock my mailbox now cuts a connected IMAP session")
    p.sign_in(user, pw3)
    p.expect_h1("Overview")
    imap = imap_connect(imap_port)
    try:
        imap.login(user, pw3)
        typ, _ = imap.select("INBOX")
        check(typ == "OK", "SELECT INBOX failed before the lock")
        typ, _ = imap.noop()
        check(typ == "OK", "NOOP failed before the lock")
        p.press("Lock my mailbox now")
        p.expect_h1("Sign in")
        p.expect_msg("ok", "Your mailbox is locked")
        cut = None
        try:
            typ, data = imap.noop()
            cut = f"NOOP after the lock answered {typ} {data}"
        except imaplib.IMAP4.abort as e:  # BYE, or EOF on the socket
            step(f"IMAP session cut: {e}")
        except OSError as e:
            step(f"IMAP session cut: {e!r}")
        check(cut is None, cut or "")
    finally:
        try:
            imap.shutdown()
        except Exception:
            pass
    p.go("/")
    p.expect_h1("Sign in")  # the panel session ended too
    check(imap_login_ok(imap_port, user, pw3), "IMAP LOGIN after the lock failed")

    step("all checks passed")


def main():
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    base, imap_port, user, pw, workdir, shots = sys.argv[1:]
    imap_port = int(imap_port)
    os.makedirs(shots, exist_ok=True)
    driver = make_driver(workdir)
    try:
        run(driver, base, imap_port, user, pw, workdir, shots)
    except Failed as e:
        try:
            driver.save_screenshot(os.path.join(workdir, "failure.png"))
        except Exception:
            pass
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
