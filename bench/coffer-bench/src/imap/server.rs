//! A scratch Coffer installation made with the real `coffer` binary, and a `coffer serve`
//! child process that is always killed: by [`Server::stop`], by `Drop` (also when the
//! bench fails or panics), and by the kernel if the bench itself dies (parent-death
//! signal).

use crate::store::{BoxError, TempDir};
use coffer_vault::KdfParams;
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `coffer init` profile that writes the deliberately weak test KDF.
pub const INSECURE_PROFILE: &str = "insecure-fast-for-tests";

/// What the bench needs from `coffer.toml`.
pub struct Config {
    pub data_dir: PathBuf,
    pub pepper: PathBuf,
    pub cert: PathBuf,
    pub kdf_profile: String,
    /// The cost the server uses for key slots (what `Config::kdf_params` in the coffer
    /// crate computes from the same file).
    pub kdf: KdfParams,
}

pub struct Installation {
    dir: TempDir,
    coffer: PathBuf,
    pub config: Config,
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

fn table<'a>(t: &'a toml::Table, key: &str) -> Result<&'a toml::Table, BoxError> {
    t.get(key)
        .and_then(|v| v.as_table())
        .ok_or_else(|| format!("coffer.toml has no [{key}] table").into())
}

fn string(t: &toml::Table, key: &str) -> Result<String, BoxError> {
    t.get(key)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("coffer.toml: {key} is not a string").into())
}

fn integer(t: &toml::Table, key: &str) -> Result<u32, BoxError> {
    t.get(key)
        .and_then(|v| v.as_integer())
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("coffer.toml: [kdf] {key} is not a small integer").into())
}

impl Installation {
    /// `coffer init --kdf-profile PROFILE` in a fresh directory under `parent`, with every
    /// listener moved to a port the system picks on 127.0.0.1.
    pub fn create(coffer: &Path, parent: &Path, profile: &str) -> Result<Installation, BoxError> {
        let dir = TempDir::new(parent, "coffer-bench-imap")?;
        let mut inst = Installation {
            dir,
            coffer: coffer.to_path_buf(),
            config: Config {
                data_dir: PathBuf::new(),
                pepper: PathBuf::new(),
                cert: PathBuf::new(),
                kdf_profile: String::new(),
                kdf: coffer_vault::kdf::INSECURE_TEST_PARAMS,
            },
        };
        let out = inst
            .command(&["init", "--kdf-profile", profile])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", coffer.display()))?;
        if !out.status.success() {
            return Err(format!("coffer init failed: {}", output_text(&out)).into());
        }
        let path = inst.dir.path().join("coffer.toml");
        let mut text = std::fs::read_to_string(&path)?;
        for port in ["1143", "1993", "2424", "8443"] {
            let from = format!("\"127.0.0.1:{port}\"");
            if !text.contains(&from) {
                return Err(
                    format!("coffer.toml does not listen on {from}; the template changed").into(),
                );
            }
            text = text.replace(&from, "\"127.0.0.1:0\"");
        }
        std::fs::write(&path, &text)?;
        inst.config = Self::read_config(inst.dir.path(), &text)?;
        Ok(inst)
    }

    /// Points `[storage] url` at `url` (an empty PostgreSQL database) and runs `coffer
    /// init` again, which creates the schema there and records the pepper's check value.
    pub fn use_storage_url(&self, url: &str) -> Result<(), BoxError> {
        self.set_storage_url(url)?;
        let out = self
            .command(&["init"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", self.coffer.display()))?;
        if !out.status.success() {
            return Err(format!("coffer init on {url} failed: {}", output_text(&out)).into());
        }
        Ok(())
    }

    fn set_storage_url(&self, url: &str) -> Result<(), BoxError> {
        let path = self.dir.path().join("coffer.toml");
        let text = std::fs::read_to_string(&path)?;
        if !text.contains("url = \"\"") {
            return Err("coffer.toml has no empty [storage] url; the template changed".into());
        }
        std::fs::write(
            &path,
            text.replacen("url = \"\"", &format!("url = {url:?}"), 1),
        )?;
        Ok(())
    }

    /// Another node of this installation on PostgreSQL `url`: a fresh scratch directory
    /// with this pepper (every node needs the same pepper) and its own listeners; the
    /// schema and the users are already in the database.
    pub fn another_node(&self, parent: &Path, url: &str) -> Result<Installation, BoxError> {
        let node = Installation::create(&self.coffer, parent, &self.config.kdf_profile)?;
        std::fs::copy(&self.config.pepper, &node.config.pepper)?;
        node.set_storage_url(url)?;
        Ok(node)
    }

    fn read_config(base: &Path, text: &str) -> Result<Config, BoxError> {
        let t: toml::Table = text.parse()?;
        let resolve = |p: String| {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { base.join(p) }
        };
        let kdf = table(&t, "kdf")?;
        let kdf_profile = string(kdf, "profile")?;
        let params = if kdf_profile == INSECURE_PROFILE {
            coffer_vault::kdf::INSECURE_TEST_PARAMS
        } else {
            KdfParams {
                memory_kib: integer(kdf, "memory_kib")?,
                time_cost: integer(kdf, "time_cost")?,
                parallelism: integer(kdf, "parallelism")?,
            }
        };
        Ok(Config {
            data_dir: resolve(string(&t, "data_dir")?),
            pepper: resolve(string(&t, "pepper_file")?),
            cert: resolve(string(table(&t, "tls")?, "cert")?),
            kdf_profile,
            kdf: params,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.coffer);
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("COFFER_CONFIG")
            .env_remove("COFFER_LOG");
        c
    }

    /// `coffer user add NAME --password-stdin`.
    pub fn add_user(&self, name: &str, password: &str) -> Result<(), BoxError> {
        let mut child = self
            .command(&["user", "add", name, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(format!("{password}\n").as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!("coffer user add {name} failed: {}", output_text(&out)).into());
        }
        Ok(())
    }

    /// Starts `coffer serve` and waits (up to 60 s) for its "running" line.
    pub fn start(&self) -> Result<Server, BoxError> {
        let mut command = self.command(&["serve"]);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only prctl(PR_SET_PDEATHSIG) runs, which is
            // async-signal-safe and allocates nothing.
            unsafe {
                command.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::KILL,
                    ))
                    .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {} serve: {e}", self.coffer.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            // Drains standard error for the whole life of the server, so that it never
            // blocks on a full pipe, and keeps the last lines for error messages.
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    if line.contains("coffer serve: running") {
                        let _ = tx.send(line.clone());
                    }
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() >= 40 {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let pid = child.id();
        // Owned before anything can fail, so that the child is killed.
        let mut server = Server {
            child,
            pid,
            imap: "0.0.0.0:0".parse()?,
            imaps: "0.0.0.0:0".parse()?,
            lmtp: None,
            log,
        };
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                return Err(format!(
                    "coffer serve did not report that it runs; its last output:\n{}",
                    server.log_tail()
                )
                .into());
            }
        };
        let (imap, imaps) = parse_listeners(&line)?;
        server.imap = imap;
        server.imaps = imaps;
        server.lmtp = parse_lmtp(&line);
        Ok(server)
    }
}

/// The IMAP+STARTTLS and IMAPS addresses from the line "coffer serve: running on ...
/// listening on 127.0.0.1:41234 (IMAP+STARTTLS), 127.0.0.1:40111 (IMAPS). Stop ...".
fn parse_listeners(line: &str) -> Result<(SocketAddr, SocketAddr), BoxError> {
    let list = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(". ").next())
        .ok_or_else(|| format!("no listener list in {line:?}"))?;
    let (mut imap, mut imaps) = (None, None);
    for item in list.split(", ") {
        let Some((addr, kind)) = item.split_once(' ') else {
            continue;
        };
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            continue;
        };
        match kind.trim_end_matches('.') {
            "(IMAPS)" => imaps = imaps.or(Some(addr)),
            "(IMAP+STARTTLS)" => imap = imap.or(Some(addr)),
            _ => {}
        }
    }
    match (imap, imaps) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(format!("no IMAP+STARTTLS and IMAPS listeners in {line:?}").into()),
    }
}

/// The first TCP LMTP address in the "running" line ("127.0.0.1:40112 (LMTP)").
fn parse_lmtp(line: &str) -> Option<SocketAddr> {
    let list = line.split("listening on ").nth(1)?.split(". ").next()?;
    list.split(", ").find_map(|item| {
        let (addr, kind) = item.split_once(' ')?;
        (kind.trim_end_matches('.') == "(LMTP)")
            .then(|| addr.parse().ok())
            .flatten()
    })
}

pub struct Server {
    child: Child,
    pub pid: u32,
    /// Plain IMAP (STARTTLS) listener.
    pub imap: SocketAddr,
    /// Implicit-TLS listener.
    pub imaps: SocketAddr,
    /// TCP LMTP listener, if the server reported one.
    pub lmtp: Option<SocketAddr>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// The last lines the server wrote to standard error.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// A line of /proc/PID/status, e.g. "VmRSS".
    fn status_kib(&self, field: &str) -> Result<u64, BoxError> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {field} in /proc/{}/status", self.pid).into())
    }

    /// Resident memory of the server process, in KiB.
    pub fn vm_rss_kib(&self) -> Result<u64, BoxError> {
        self.status_kib("VmRSS")
    }

    /// Threads of the server process.
    pub fn threads(&self) -> Result<u64, BoxError> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        text.lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| "no Threads in /proc/PID/status".into())
    }

    /// User plus system CPU time the server has used so far.
    pub fn cpu_time(&self) -> Result<Duration, BoxError> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may contain spaces) start at field 3.
        let after = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
            return Err(format!("unparsable /proc/{}/stat", self.pid).into());
        };
        let hz = rustix::param::clock_ticks_per_second().max(1);
        Ok(Duration::from_secs_f64((utime + stime) as f64 / hz as f64))
    }

    /// The server's open-files limit, from /proc/PID/limits ("soft/hard").
    pub fn nofile_limit(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/limits", self.pid))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .map(|l| {
                        let v: Vec<&str> = l.split_whitespace().collect();
                        format!("{}/{}", v.get(3).unwrap_or(&"?"), v.get(4).unwrap_or(&"?"))
                    })
            })
            .unwrap_or_else(|| "unknown".into())
    }

    /// Fails with the server's last output if it has exited.
    pub fn check_alive(&mut self) -> Result<(), BoxError> {
        if let Some(status) = self.child.try_wait()? {
            return Err(format!(
                "coffer serve exited ({status}); its last output:\n{}",
                self.log_tail()
            )
            .into());
        }
        Ok(())
    }

    /// SIGTERM, up to 10 s for a clean exit, then SIGKILL.
    pub fn stop(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drop kills.
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_from_the_running_line() {
        let line = "coffer serve: running on /tmp/x/coffer-data (pid 7); listening on \
                    127.0.0.1:41234 (IMAP+STARTTLS), 127.0.0.1:40111 (IMAPS). Stop with Ctrl-C or SIGTERM.";
        let (imap, imaps) = parse_listeners(line).unwrap();
        assert_eq!(imap, "127.0.0.1:41234".parse().unwrap());
        assert_eq!(imaps, "127.0.0.1:40111".parse().unwrap());
        assert!(parse_listeners("coffer serve: running").is_err());
        let line = "coffer serve: running on /tmp/x (pid 7); listening on 127.0.0.1:1 \
                    (IMAP+STARTTLS), 127.0.0.1:2 (IMAPS), 127.0.0.1:3 (LMTP). Stop with Ctrl-C.";
        assert_eq!(parse_lmtp(line), Some("127.0.0.1:3".parse().unwrap()));
        assert_eq!(parse_lmtp("listening on 127.0.0.1:1 (IMAPS). Stop"), None);
    }
}
