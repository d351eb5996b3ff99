//! A real CrowdSec Local API (Debian's `crowdsec` package) for tests and benchmarks.
//!
//! The package is never installed (its post-install step wants the Central API and leaves dpkg
//! half-configured here): `cargo xtask setup` downloads it with `apt-get download` and unpacks
//! it with `dpkg-deb -x` into `target/crowdsec/root` (the tests do the same if it is missing).
//! Each [`Lapi`] runs `crowdsec -no-cs` (the LAPI
//! alone, Central API off) from a private configuration in a temporary directory, inside a
//! namespace the test created, and is SIGKILLed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{Netns, wait_for};

/// Where the unpacked package lives: `target/crowdsec/root`, next to the test binaries.
fn cache_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own binary path");
    let mut dir = exe.parent().expect("binary dir").to_path_buf();
    // target/<profile>/deps or target/<profile> -> target
    while dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "debug" || n == "release")
    {
        dir.pop();
    }
    dir.join("crowdsec")
}

/// Downloads and unpacks the `crowdsec` package once (safe against concurrent callers: the
/// unpacked tree is renamed into place whole). Returns the tree's root.
pub fn unpacked() -> Result<PathBuf> {
    // Tests of one binary run in parallel: one download is enough.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = cache_dir().join("root");
    if root.join("usr/bin/crowdsec").exists() {
        return Ok(root);
    }
    std::fs::create_dir_all(cache_dir())?;
    let work = tempfile::tempdir_in(cache_dir())?;
    let out = Command::new("apt-get")
        .args(["download", "-q", "crowdsec"])
        .current_dir(work.path())
        .output()
        .context("running apt-get download crowdsec")?;
    ensure!(
        out.status.success(),
        "`apt-get download crowdsec` failed (run `cargo xtask setup`, which runs apt-get update): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(work.path())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = work.path().join("root");
    crate::run(
        "dpkg-deb",
        &["-x", &deb.to_string_lossy(), &tree.to_string_lossy()],
    )?;
    match std::fs::rename(&tree, &root) {
        Ok(()) => {}
        // Another test unpacked it first.
        Err(_) if root.join("usr/bin/crowdsec").exists() => {}
        Err(e) => return Err(e).context("moving the unpacked crowdsec into place"),
    }
    Ok(root)
}

/// Certificates for mTLS between the LAPI and its clients, made with the `openssl` CLI: a CA,
/// the LAPI's server certificate (for 127.0.0.1 and the fleet's 198.51.100.1), a bouncer
/// certificate (OU `bouncer-ou`, which LAPI 1.4 accepts from bouncers by default), one from the
/// same CA with another OU (`agent`), a machine's (`machine`: OU `agent-ou`, which it accepts
/// from agents, CN `host-a`), and one from an unrelated CA.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Makes every certificate and key in a fresh temporary directory.
    pub fn new() -> Result<Self> {
        let pki = Self {
            dir: tempfile::tempdir()?,
        };
        pki.ca("ca")?;
        pki.ca("rogue-ca")?;
        pki.leaf(
            "server",
            "ca",
            "/O=enforcer tests/CN=127.0.0.1",
            Some("subjectAltName=IP:127.0.0.1,IP:198.51.100.1"),
        )?;
        pki.leaf(
            "bouncer",
            "ca",
            "/O=enforcer tests/OU=bouncer-ou/CN=enforcer-mtls",
            None,
        )?;
        pki.leaf(
            "agent",
            "ca",
            "/O=enforcer tests/OU=agent-ou/CN=enforcer-wrong-ou",
            None,
        )?;
        pki.leaf(
            "machine",
            "ca",
            "/O=enforcer tests/OU=agent-ou/CN=host-a",
            None,
        )?;
        pki.leaf(
            "rogue",
            "rogue-ca",
            "/O=enforcer tests/OU=bouncer-ou/CN=enforcer-rogue",
            None,
        )?;
        Ok(pki)
    }

    /// `NAME.pem` (certificate) or `NAME.key` (its key).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .context("running openssl")?;
        ensure!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn ca(&self, name: &str) -> Result<()> {
        let subject = format!("/O=enforcer tests/CN={name}");
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subject,
        ])
    }

    fn leaf(&self, name: &str, ca: &str, subject: &str, ext: Option<&str>) -> Result<()> {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ])?;
        let ext_file = format!("{name}.ext");
        let usage = if ext.is_some() {
            "serverAuth"
        } else {
            "clientAuth"
        };
        std::fs::write(
            self.path(&ext_file),
            format!("extendedKeyUsage={usage}\n{}\n", ext.unwrap_or("")),
        )?;
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ])
    }
}

/// A running LAPI.
pub struct Lapi {
    root: PathBuf,
    dir: tempfile::TempDir,
    netns: String,
    child: Option<Child>,
    /// Where it listens (`127.0.0.1:PORT` or a lab address).
    pub listen: String,
    /// Whether it serves HTTPS (see [`Lapi::start_tls`]).
    tls: bool,
}

impl Lapi {
    /// Starts a LAPI in namespace `ns`, listening on `listen` (`IP:PORT`).
    pub fn start(ns: &Netns, listen: &str) -> Result<Self> {
        Self::start_with(ns, listen, None)
    }

    /// Starts a LAPI serving HTTPS with `pki`'s server certificate, verifying client
    /// certificates against its CA when one is given (`VerifyClientCertIfGiven`: bouncers may
    /// use a certificate or a key; `cscli` logs in with its password).
    pub fn start_tls(ns: &Netns, listen: &str, pki: &Pki) -> Result<Self> {
        Self::start_with(ns, listen, Some(pki))
    }

    fn start_with(ns: &Netns, listen: &str, pki: Option<&Pki>) -> Result<Self> {
        let root = unpacked()?;
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("data"))?;
        std::fs::create_dir_all(d.join("hub"))?;
        let r = root.display();
        std::fs::write(
            d.join("config.yaml"),
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: warning\n  working_dir: .\n\
                 config_paths:\n  config_dir: {r}/etc/crowdsec/\n  data_dir: {d}/data/\n  simulation_path: {r}/etc/crowdsec/simulation.yaml\n  hub_dir: {d}/hub/\n  index_path: {d}/hub/.index.json\n  notification_dir: {r}/etc/crowdsec/notifications/\n  plugin_dir: {r}/usr/lib/crowdsec/plugins/\n\
                 crowdsec_service:\n  acquisition_path: {r}/etc/crowdsec/acquis.yaml\n  parser_routines: 1\n\
                 cscli:\n  output: human\n\
                 db_config:\n  log_level: warning\n  type: sqlite\n  use_wal: true\n  db_path: {d}/data/crowdsec.db\n  flush:\n    max_items: 5000000\n    max_age: 7d\n\
                 api:\n  client:\n    insecure_skip_verify: {tls}\n    credentials_path: {d}/credentials.yaml\n  server:\n    log_level: warning\n    listen_uri: {listen}\n    profiles_path: {r}/etc/crowdsec/profiles.yaml\n    trusted_ips:\n      - 127.0.0.1\n{server_tls}\
                 prometheus:\n  enabled: false\n",
                d = d.display(),
                tls = pki.is_some(),
                server_tls = pki.map(server_tls).unwrap_or_default(),
            ),
        )?;
        let scheme = if pki.is_some() { "https" } else { "http" };
        std::fs::write(
            d.join("credentials.yaml"),
            format!("url: {scheme}://{listen}\n"),
        )?;
        let mut lapi = Self {
            root,
            dir,
            netns: ns.name().to_owned(),
            child: None,
            listen: listen.to_owned(),
            tls: pki.is_some(),
        };
        let creds = lapi.dir.path().join("credentials.yaml");
        lapi.cscli(&[
            "machines",
            "add",
            "test",
            "--auto",
            "--force",
            "-f",
            &creds.to_string_lossy(),
            "--url",
            &lapi.url(),
        ])?;
        lapi.spawn()?;
        Ok(lapi)
    }

    /// The URL a bouncer uses.
    pub fn url(&self) -> String {
        format!(
            "{}://{}/",
            if self.tls { "https" } else { "http" },
            self.listen
        )
    }

    /// (Re)starts the LAPI process (the database persists) and waits until it answers.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join("lapi.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(self.root.join("usr/bin/crowdsec"))
            .arg("-c")
            .arg(self.dir.path().join("config.yaml"))
            .arg("-no-cs")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting crowdsec")?;
        self.child = Some(child);
        wait_for("the LAPI to answer", Duration::from_secs(30), || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!("crowdsec exited ({status}): {}", self.log());
            }
            // Any HTTP answer (401 without a key) means it listens.
            let out = self.exec(
                "curl",
                &[
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("{}v1/decisions/stream", self.url()),
                ],
            )?;
            Ok((out != "000").then_some(()))
        })
    }

    /// Stops the LAPI (SIGKILL: an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // It may have exited already; reaped either way.
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// What the LAPI logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lapi.log")).unwrap_or_default()
    }

    fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `cscli` against this LAPI (in its namespace); fails with its output on error.
    pub fn cscli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(self.root.join("usr/bin/cscli"))
            .arg("-c")
            .arg(self.dir.path().join("config.yaml"))
            .args(args)
            .output()
            .context("running cscli")?;
        ensure!(
            out.status.success(),
            "cscli {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Adds one `ban` decision of `duration` per value (an address or a range) in one
    /// `cscli decisions import`.
    pub fn import(&self, values: &[String], duration: &str) -> Result<()> {
        use std::io::Write as _;
        let csv = self
            .dir
            .path()
            .join(format!("{}.csv", crate::unique_name("import")));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv)?);
        writeln!(f, "duration,scope,value,reason")?;
        for v in values {
            let scope = if v.contains('/') { "range" } else { "ip" };
            writeln!(f, "{duration},{scope},{v},test/import")?;
        }
        f.into_inner()?.sync_all()?;
        self.cscli(&["decisions", "import", "-i", &csv.to_string_lossy()])?;
        Ok(())
    }

    /// Registers a bouncer and returns its API key.
    pub fn add_bouncer(&self, name: &str) -> Result<String> {
        Ok(self
            .cscli(&["bouncers", "add", name, "-o", "raw"])?
            .trim()
            .to_owned())
    }

    /// Writes a key file (mode 0600) and a daemon configuration using it; returns the
    /// configuration's path (inside this LAPI's temporary directory).
    pub fn daemon_config(&self, bouncer: &str, url: &str, extra: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        let key = self.add_bouncer(bouncer)?;
        let key_file = self.dir.path().join(format!("{bouncer}.key"));
        std::fs::write(&key_file, &key)?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
        let config = self.dir.path().join(format!("{bouncer}.toml"));
        std::fs::write(
            &config,
            format!(
                "[crowdsec]\napi_url = \"{url}\"\napi_key_file = \"{}\"\n{extra}",
                key_file.display()
            ),
        )?;
        Ok(config)
    }

    /// Registers a machine (agent) with a random password, as an operator would with
    /// `cscli machines add NAME --password ...`; returns the password file (mode 0600).
    pub fn add_machine(&self, name: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        let password = crate::unique_name("pw").replace(['-', '_'], "");
        let creds = self.dir.path().join(format!("{name}.creds.yaml"));
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            &password,
            "-f",
            &creds.to_string_lossy(),
            "--force",
        ])?;
        let file = self.dir.path().join(format!("{name}.password"));
        std::fs::write(&file, &password)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }

    /// The live decisions for `value` as a bouncer sees them (`GET /v1/decisions?ip=` with a
    /// bouncer's key, here an `observer` bouncer registered on first use).
    pub fn decisions(&self, value: &str) -> Result<Vec<serde_json::Value>> {
        let key_file = self.dir.path().join("observer.key");
        let key = match std::fs::read_to_string(&key_file) {
            Ok(k) => k,
            Err(_) => {
                let k = self.add_bouncer("observer")?;
                std::fs::write(&key_file, &k)?;
                k
            }
        };
        let out = self.exec(
            "curl",
            &[
                "-sk",
                "-H",
                &format!("X-Api-Key: {key}"),
                &format!("{}v1/decisions?ip={value}", self.url()),
            ],
        )?;
        let answer: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("the LAPI's decisions for {value}: {out}"))?;
        Ok(answer.as_array().cloned().unwrap_or_default())
    }

    /// A path inside the LAPI's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The unpacked package root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The `api.server.tls` section of a LAPI serving `pki`'s certificates.
fn server_tls(pki: &Pki) -> String {
    format!(
        "    tls:\n      cert_file: {}\n      key_file: {}\n      ca_cert_path: {}\n      client_verification: VerifyClientCertIfGiven\n      bouncers_allowed_ou:\n        - bouncer-ou\n      agents_allowed_ou:\n        - agent-ou\n",
        pki.path("server.pem").display(),
        pki.path("server.key").display(),
        pki.path("ca.pem").display()
    )
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two labs joined by a management link (198.51.100.1 in A's receiver namespace, .2 in B's),
/// with a LAPI on A's side at [`FLEET_LAPI`]: two hosts of a fleet sharing one Local API. The
/// namespaces, link and LAPI go with it.
pub struct FleetLabs {
    /// The LAPI both reach (first: it stops before its namespace goes).
    pub lapi: Lapi,
    /// Host A.
    pub a: crate::Lab,
    /// Host B.
    pub b: crate::Lab,
}

/// Where the fleet's LAPI listens.
pub const FLEET_LAPI: &str = "198.51.100.1:8080";

impl FleetLabs {
    /// Two labs, their link, and a LAPI (HTTPS with `pki`'s certificates when given).
    pub fn new(pki: Option<&Pki>) -> Result<Self> {
        let a = crate::Lab::new()?;
        let b = crate::Lab::new()?;
        a.receiver.ip(&[
            "link",
            "add",
            "mg",
            "type",
            "veth",
            "peer",
            "name",
            "mg",
            "netns",
            b.receiver.name(),
        ])?;
        a.receiver
            .ip(&["addr", "add", "198.51.100.1/30", "dev", "mg"])?;
        b.receiver
            .ip(&["addr", "add", "198.51.100.2/30", "dev", "mg"])?;
        a.receiver.ip(&["link", "set", "mg", "up"])?;
        b.receiver.ip(&["link", "set", "mg", "up"])?;
        let lapi = match pki {
            Some(pki) => Lapi::start_tls(&a.receiver, FLEET_LAPI, pki)?,
            None => Lapi::start(&a.receiver, FLEET_LAPI)?,
        };
        Ok(Self { lapi, a, b })
    }
}

/// A relay in front of a LAPI, in a namespace: forwards each request (one per connection), but
/// answers the first `failures` requests whose request line starts with `matching` (`GET
/// /v1/alerts/`) with the 500 `database is locked` LAPI 1.4's SQLite gives under load.
pub struct FlakyRelay {
    /// Where it listens.
    pub listen: String,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failures: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    netns: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FlakyRelay {
    /// Listens on `listen` in `ns` and forwards to `upstream` (both `IP:PORT`).
    pub fn start(
        ns: &Netns,
        listen: &str,
        upstream: &str,
        matching: &str,
        failures: usize,
    ) -> Result<Self> {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, AtomicUsize},
        };
        let listener = ns.run(|| std::net::TcpListener::bind(listen))??;
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (failed.clone(), stop.clone());
        let (upstream, matching, netns) = (
            upstream.to_owned(),
            matching.to_owned(),
            ns.name().to_owned(),
        );
        let thread = std::thread::spawn(move || {
            // Connections to the upstream are made from the namespace.
            if enter(&netns).is_err() {
                return;
            }
            for client in listener.incoming().flatten() {
                if s.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                // A relay that failed is counted in `failures`; the next connection is served.
                relay(client, &upstream, &matching, failures, &f).ok();
            }
        });
        Ok(Self {
            listen: listen.to_owned(),
            failed,
            failures,
            stop,
            netns: ns.name().to_owned(),
            thread: Some(thread),
        })
    }

    /// How many requests it failed so far.
    pub fn failed(&self) -> usize {
        self.failed
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(self.failures)
    }
}

/// Enters namespace `name` on this thread.
fn enter(name: &str) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Relays one request: its head and body to `upstream` (asking it to close after), the answer
/// back; or the 500 instead while failures are due.
fn relay(
    client: std::net::TcpStream,
    upstream: &str,
    matching: &str,
    failures: usize,
    failed: &std::sync::atomic::AtomicUsize,
) -> Result<()> {
    use std::io::{BufRead as _, Read as _, Write as _};
    let mut reader = std::io::BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if !lower.starts_with("connection:") {
            head.push(line);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut client = client;
    if head.first().is_some_and(|l| l.starts_with(matching))
        && failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < failures
    {
        let answer = r#"{"message":"database is locked"}"#;
        write!(
            client,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        )?;
        return Ok(());
    }
    let mut up = std::net::TcpStream::connect(upstream)?;
    for line in &head {
        up.write_all(line.as_bytes())?;
    }
    up.write_all(b"Connection: close\r\n\r\n")?;
    up.write_all(&body)?;
    std::io::copy(&mut up, &mut client)?;
    Ok(())
}

impl Drop for FlakyRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept with one last connection, from the namespace.
        let (netns, listen) = (self.netns.clone(), self.listen.clone());
        // Only a wake-up: the accept loop sees `stop` with or without it.
        std::thread::spawn(move || {
            if enter(&netns).is_ok() {
                std::net::TcpStream::connect(listen).ok();
            }
        })
        .join()
        .ok();
        if let Some(t) = self.thread.take() {
            // A panicked relay thread has printed its panic; stopping goes on.
            t.join().ok();
        }
    }
}
