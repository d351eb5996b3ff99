//! A real CrowdSec Local API (Debian's `crowdsec` package) for tests and benchmarks.
//!
//! The package is never installed (its post-install step wants the Central API and leaves dpkg
//! half-configured here): it is downloaded with `apt-get download` and unpacked with
//! `dpkg-deb -x` once, into `target/crowdsec/`. Each [`Lapi`] runs `crowdsec -no-cs` (the LAPI
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
    while dir.file_name().is_some_and(|n| n == "deps" || n == "debug" || n == "release") {
        dir.pop();
    }
    dir.join("crowdsec")
}

/// Downloads and unpacks the `crowdsec` package once (safe against concurrent callers: the
/// unpacked tree is renamed into place whole). Returns the tree's root.
pub fn unpacked() -> Result<PathBuf> {
    // Tests of one binary run in parallel: one download is enough.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
    crate::run("dpkg-deb", &["-x", &deb.to_string_lossy(), &tree.to_string_lossy()])?;
    match std::fs::rename(&tree, &root) {
        Ok(()) => {}
        // Another test unpacked it first.
        Err(_) if root.join("usr/bin/crowdsec").exists() => {}
        Err(e) => return Err(e).context("moving the unpacked crowdsec into place"),
    }
    Ok(root)
}

/// A running LAPI.
pub struct Lapi {
    root: PathBuf,
    dir: tempfile::TempDir,
    netns: String,
    child: Option<Child>,
    /// Where it listens (`127.0.0.1:PORT` or a lab address).
    pub listen: String,
}

impl Lapi {
    /// Starts a LAPI in namespace `ns`, listening on `listen` (`IP:PORT`).
    pub fn start(ns: &Netns, listen: &str) -> Result<Self> {
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
                 api:\n  client:\n    insecure_skip_verify: false\n    credentials_path: {d}/credentials.yaml\n  server:\n    log_level: warning\n    listen_uri: {listen}\n    profiles_path: {r}/etc/crowdsec/profiles.yaml\n    trusted_ips:\n      - 127.0.0.1\n\
                 prometheus:\n  enabled: false\n",
                d = d.display()
            ),
        )?;
        std::fs::write(d.join("credentials.yaml"), format!("url: http://{listen}\n"))?;
        let mut lapi = Self {
            root,
            dir,
            netns: ns.name().to_owned(),
            child: None,
            listen: listen.to_owned(),
        };
        let creds = lapi.dir.path().join("credentials.yaml");
        lapi.cscli(&["machines", "add", "test", "--auto", "--force", "-f", &creds.to_string_lossy()])?;
        lapi.spawn()?;
        Ok(lapi)
    }

    /// The URL a bouncer uses.
    pub fn url(&self) -> String {
        format!("http://{}/", self.listen)
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
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!("crowdsec exited ({status}): {}", self.log());
            }
            // Any HTTP answer (401 without a key) means it listens.
            let out = self.exec("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}v1/decisions/stream", self.url())])?;
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
        let out = Command::new("ip").args(["netns", "exec", &self.netns, program]).args(args).output()?;
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

    /// Registers a bouncer and returns its API key.
    pub fn add_bouncer(&self, name: &str) -> Result<String> {
        Ok(self.cscli(&["bouncers", "add", name, "-o", "raw"])?.trim().to_owned())
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
            format!("[crowdsec]\napi_url = \"{url}\"\napi_key_file = \"{}\"\n{extra}", key_file.display()),
        )?;
        Ok(config)
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

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}
