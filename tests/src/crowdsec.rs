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

/// Certificates for mTLS between the LAPI and a bouncer, made with the `openssl` CLI: a CA,
/// the LAPI's server certificate (for 127.0.0.1), a bouncer certificate (OU `bouncer-ou`, which
/// LAPI 1.4 accepts from bouncers by default), one from the same CA with another OU, and one
/// from an unrelated CA.
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
            Some("subjectAltName=IP:127.0.0.1"),
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
            let _ = c.kill();
            let _ = c.wait();
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
        "    tls:\n      cert_file: {}\n      key_file: {}\n      ca_cert_path: {}\n      client_verification: VerifyClientCertIfGiven\n      bouncers_allowed_ou:\n        - bouncer-ou\n",
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
