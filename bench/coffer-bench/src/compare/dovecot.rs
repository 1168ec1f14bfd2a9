//! A private Dovecot instance started and stopped by the bench: its own config, base_dir,
//! state, log and Maildirs under one temporary directory, IMAP and LMTP on free loopback
//! ports, never the system service. Plain (Maildir) or with mail_crypt and per-user
//! password-protected keys.
//!
//! `dovecot -F` runs as a child process of the bench with a parent-death signal, so the
//! master (and with it every Dovecot process) ends when the bench ends, also on failure.

use crate::store::{BoxError, TempDir};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged system user that owns the Maildirs (Dovecot refuses root).
pub const MAIL_USER: &str = "cofferbench";

/// Which of the two Dovecot set-ups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Plain,
    MailCrypt,
}

pub struct Dovecot {
    dir: TempDir,
    /// base_dir, short because it holds unix sockets (108-byte path limit).
    _run_dir: TempDir,
    child: Child,
    pub imap: SocketAddr,
    pub lmtp: SocketAddr,
    pub version: String,
}

/// The dovecot binary (Debian puts it in /usr/sbin, which may not be on PATH).
fn sbin(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// Whether a Dovecot with LMTP is installed and this process may start it (root).
pub fn available() -> Result<(), String> {
    if !sbin("dovecot").is_file() {
        return Err(
            "dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)".into(),
        );
    }
    if !Path::new("/usr/lib/dovecot/lmtp").is_file() {
        return Err("dovecot-lmtpd is not installed".into());
    }
    if !rustix::process::geteuid().is_root() {
        return Err("starting Dovecot needs root (it switches to its mail user)".into());
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<String, BoxError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// uid and gid of the mail user, created with useradd if missing.
fn mail_user() -> Result<(u32, u32), BoxError> {
    let id = |flag: &str| Command::new("id").args([flag, MAIL_USER]).output();
    if !id("-u")?.status.success() {
        run(
            Command::new(sbin("useradd")).args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                MAIL_USER,
            ]),
            "useradd",
        )?;
    }
    let num = |flag: &str| -> Result<u32, BoxError> {
        let out = id(flag)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((num("-u")?, num("-g")?))
}

/// A free TCP port on 127.0.0.1 (bound and released; Dovecot binds it right after).
fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Dovecot {
    /// Writes the config, the users (all with `password`) and starts `dovecot -F`.
    /// For mail_crypt, every user's key pair is generated before the server starts.
    pub fn start(
        flavour: Flavour,
        parent: &Path,
        users: &[String],
        password: &str,
        fsync: &str,
    ) -> Result<Dovecot, BoxError> {
        let (uid, gid) = mail_user()?;
        let name = match flavour {
            Flavour::Plain => "coffer-bench-dovecot",
            Flavour::MailCrypt => "coffer-bench-dovecot-crypt",
        };
        let dir = TempDir::new(parent, name)?;
        let root = dir.path().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        let run_dir = TempDir::new(Path::new("/tmp"), "cbd")?;
        std::fs::set_permissions(run_dir.path(), std::fs::Permissions::from_mode(0o755))?;
        for sub in ["state", "log", "home"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let chown = |p: &Path| -> Result<(), BoxError> {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
            Ok(())
        };
        chown(&root.join("home"))?;
        let hash = run(
            Command::new(sbin("doveadm")).args(["pw", "-s", "SHA512-CRYPT", "-p", password]),
            "doveadm pw",
        )?;
        let mut passwd = String::new();
        for u in users {
            let home = root.join("home").join(u);
            std::fs::create_dir_all(&home)?;
            chown(&home)?;
            passwd.push_str(&format!("{u}:{hash}:{uid}:{gid}::{}::\n", home.display()));
        }
        let passwd_path = root.join("passwd");
        std::fs::write(&passwd_path, passwd)?;
        let imap_port = free_port()?;
        let lmtp_port = free_port()?;
        let crypt = flavour == Flavour::MailCrypt;
        let conf = root.join("dovecot.conf");
        let r = root.display();
        let text = format!(
            r#"# Private Dovecot instance of coffer-bench compare ({flavour:?}). Loopback only.
base_dir = {run}
state_dir = {r}/state
log_path = {r}/log/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 1
first_valid_gid = 1
mail_fsync = {fsync}
default_login_user = dovenull
default_internal_user = dovecot
default_process_limit = 5000
default_client_limit = 20000
{plugins}
protocol imap {{
  mail_max_userip_connections = 10000
}}
passdb {{
  driver = passwd-file
  args = username_format=%n {passwd}
{override_fields}}}
userdb {{
  driver = passwd-file
  args = username_format=%n {passwd}
}}
service imap {{
  process_limit = 10000
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
"#,
            passwd = passwd_path.display(),
            run = run_dir.path().display(),
            plugins = if crypt {
                "mail_plugins = $mail_plugins mail_crypt\n\
                 mail_attribute_dict = file:%h/Maildir/dovecot-attributes\n\
                 plugin {\n  mail_crypt_curve = prime256v1\n  mail_crypt_save_version = 2\n  \
                 mail_crypt_require_encrypted_user_key = yes\n}\n"
            } else {
                ""
            },
            override_fields = if crypt {
                "  override_fields = userdb_mail_crypt_private_password=%w\n"
            } else {
                ""
            },
        );
        std::fs::write(&conf, text)?;
        let conf_path = conf.clone();
        let version = run(
            Command::new(sbin("dovecot")).arg("--version"),
            "dovecot --version",
        )?;
        let mut command = Command::new(sbin("dovecot"));
        command
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only prctl(PR_SET_PDEATHSIG) runs between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::TERM,
                    ))
                    .map_err(std::io::Error::from)
                });
            }
        }
        let child = command
            .spawn()
            .map_err(|e| format!("starting dovecot: {e}"))?;
        let mut d = Dovecot {
            dir,
            _run_dir: run_dir,
            child,
            imap: SocketAddr::from(([127, 0, 0, 1], imap_port)),
            lmtp: SocketAddr::from(([127, 0, 0, 1], lmtp_port)),
            version: version.lines().next().unwrap_or("").to_string(),
        };
        // Ready when both listeners accept.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = d.child.try_wait()? {
                return Err(format!("dovecot exited ({status}): {}", d.log_tail()).into());
            }
            let up = |a: &SocketAddr| {
                std::net::TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()
            };
            if up(&d.imap) && up(&d.lmtp) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("dovecot did not start listening: {}", d.log_tail()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Before the first delivery (the server must run: doveadm asks its auth service).
        if crypt {
            // LMTP has no password, so it cannot create a key: every user gets one first.
            // (`-A` panics in 2.3.19, so one call per user.)
            for u in users {
                run(
                    Command::new(sbin("doveadm"))
                        .arg("-c")
                        .arg(&conf_path)
                        .arg("-o")
                        .arg(format!("plugin/mail_crypt_private_password={password}"))
                        .args(["mailbox", "cryptokey", "generate", "-u", u, "-U"]),
                    "doveadm mailbox cryptokey generate",
                )?;
            }
        }
        Ok(d)
    }

    /// The last lines of Dovecot's log.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("log/dovecot.log")).unwrap_or_default();
        // Warnings and errors say why; the Info lines of 2,000 disconnects would bury them.
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains(": Info: ")).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn master_pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of the log if the master has exited.
    pub fn check_alive(&mut self) -> Result<(), BoxError> {
        if let Some(status) = self.child.try_wait()? {
            return Err(format!("dovecot exited ({status}): {}", self.log_tail()).into());
        }
        Ok(())
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Children of the master exit when it does; give them a moment before the
        // directory (their Maildirs) is removed.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Process ids whose parent is `parent` and whose command name is `comm`.
pub fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((head, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let name = head.split_once('(').map(|(_, n)| n).unwrap_or("");
            let ppid = tail.split_whitespace().nth(1).and_then(|v| v.parse().ok());
            name == comm && ppid == Some(parent)
        })
        .collect()
}

/// Sum of VmRSS (`/proc/PID/status`) and of Pss (`/proc/PID/smaps_rollup`) over `pids`,
/// in KiB (processes that are gone count 0). PSS divides each shared page among the
/// processes that map it, so a sum of PSS does not count shared libraries N times.
pub fn memory_sum_kib(pids: &[u32]) -> (u64, u64) {
    let field = |file: &str, name: &str| -> u64 {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(name))?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    pids.iter().fold((0, 0), |(rss, pss), pid| {
        (
            rss + field(&format!("/proc/{pid}/status"), "VmRSS:"),
            pss + field(&format!("/proc/{pid}/smaps_rollup"), "Pss:"),
        )
    })
}
