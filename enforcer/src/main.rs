// The unwinder is linked into the binary (libgcc_eh, as `gcc -static-libgcc` links it), so no
// process of it loads libgcc_s.so: that library's constructor probes the CPU (`cpuid`, a VM exit
// each under a hypervisor), and every trigger (`enforcer block`, the hooks) paid it with its
// start: 0.12–0.15 ms of a 1 ms process spawn on the reference VM (docs/performance.md). The
// linker reads this library before the standard library's `-lgcc_s`, so every `_Unwind_*`
// symbol is defined by then and `--as-needed` leaves libgcc_s out. Panics unwind as before.
#[link(name = "gcc_eh", kind = "static", modifiers = "-bundle")]
unsafe extern "C" {}

fn main() {
    // Started under another name (Wazuh's active-response/bin/<name>): run that hook.
    let code = match enforcer::hooks::Hook::from_argv0(std::env::args_os().next().as_deref()) {
        Some(hook) => hook.run(),
        None => enforcer::cli::main(),
    };
    std::process::exit(code);
}
