//! The classic execnet example: ask a new interpreter for its process id.
//!
//! `cargo run --example remote_pid [SPEC]`

fn main() -> Result<(), execnet::Error> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "popen".into());
    let gw = execnet::blocking::makegateway(&spec)?;
    let ch = gw.remote_exec("import os; channel.send(os.getpid())")?;
    let remote_pid: u32 = ch.receive()?;
    println!(
        "local pid {}, remote pid {remote_pid} ({} {}.{} at {})",
        std::process::id(),
        gw.info().implementation,
        gw.info().version_info.major,
        gw.info().version_info.minor,
        gw.info().executable
    );
    gw.exit()
}
