//! A remote file server: send file names, get their contents back.
//!
//! `cargo run --example file_server -- FILE...`

use execnet::Value;

fn main() -> Result<(), execnet::Error> {
    let files: Vec<String> = std::env::args().skip(1).collect();
    let files = if files.is_empty() {
        vec!["/etc/hostname".to_string()]
    } else {
        files
    };
    let gw = execnet::blocking::makegateway("popen")?;
    let ch = gw.remote_exec(
        r#"
        for fn in channel:
            try:
                channel.send(open(fn, 'rb').read())
            except OSError as e:
                channel.send(str(e))
        "#,
    )?;
    for f in &files {
        ch.send(f)?;
        match ch.receive_value(None)? {
            Value::Bytes(content) => println!("{f}: {} bytes", content.len()),
            Value::Str(error) => println!("{f}: error: {error}"),
            other => println!("{f}: unexpected {other:?}"),
        }
    }
    ch.close()?;
    ch.waitclose(None)?;
    gw.exit()
}
