//! Real unprivileged accounts (a user and its own group), for tests of the daemon's access
//! model. Created with `groupadd`/`useradd` under unique names and removed on drop.

use std::{
    path::Path,
    process::{Command, Output},
};

use anyhow::Result;

use crate::{record_created, run, unique_name};

/// A system user with a primary group of the same name; both deleted on drop.
pub struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

impl Account {
    /// Creates the group and the user (no home directory, no login shell).
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        run("groupadd", &["--system", &name])?;
        record_created("group", &name);
        // From here on, drop removes the group even if useradd fails.
        let mut account = Self {
            name,
            uid: 0,
            gid: 0,
        };
        run(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                &account.name,
                &account.name,
            ],
        )?;
        record_created("user", &account.name);
        account.uid = run("id", &["-u", &account.name])?.trim().parse()?;
        account.gid = run("id", &["-g", &account.name])?.trim().parse()?;
        Ok(account)
    }

    /// The user's (and its group's) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Runs `program args` as this user, with its login groups.
    pub fn run(&self, program: &Path, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args([
                &format!("--reuid={}", self.uid),
                &format!("--regid={}", self.gid),
                "--init-groups",
            ])
            .arg(program)
            .args(args)
            .output()
            .expect("run setpriv")
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        // Best effort in drop: `cargo xtask test` reports (and removes) what stays.
        Command::new("userdel").arg(&self.name).output().ok();
        Command::new("groupdel").arg(&self.name).output().ok();
    }
}
