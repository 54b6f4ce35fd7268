//! `execnet`: run Python source on gateways from the command line (the
//! `execnet-cli` crate; the library `execnet` carries no CLI dependencies).
//!
//! ```text
//! execnet run [--gw SPEC]... (-c SOURCE | FILE)
//! execnet rsync SRC [--gw SPEC]... [--delete] DEST
//! ```
//!
//! Every item the remote code sends with `channel.send(...)` is printed as
//! one JSON line on stdout (prefixed by the gateway id and a space when
//! there are several gateways). Remote output (`print`) goes to stderr. On a
//! remote exception the traceback is printed to stderr and the exit status is
//! 1.
//!
//! Standard input feeds the channel: each line is sent to every gateway's
//! channel as the value it holds in JSON (`--raw`: as a `str`, without its
//! line end), and end of input closes the channels' sending side, so
//! `channel.receive()` then raises `EOFError` and `for x in channel` ends
//! while the remote code can still send:
//! `echo 41 | execnet run -c 'channel.send(channel.receive() + 1)'` prints
//! `42`. A line that is not JSON (without `--raw`) ends the input with an
//! error (exit status 1).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use execnet::blocking::{Channel, Gateway, Group};
use execnet::{Error, Value};

#[derive(Parser, Debug)]
#[command(
    name = "execnet",
    version,
    about = "Run Python code in other interpreters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs SOURCE (or FILE) on every gateway; prints received items as JSON
    /// lines; sends each line of standard input to the channel (JSON values,
    /// or str with --raw); end of input closes the channel's sending side.
    Run {
        /// A gateway spec, e.g. `popen//python=python3.12`; repeat for
        /// several gateways. Default: one `popen` gateway.
        #[arg(long = "gw", value_name = "SPEC")]
        gw: Vec<String>,
        /// The Python source to run (`channel` is the channel to the host).
        #[arg(short = 'c', value_name = "SOURCE", conflicts_with = "file")]
        source: Option<String>,
        /// A file with the Python source to run.
        #[arg(value_name = "FILE", required_unless_present = "source")]
        file: Option<PathBuf>,
        /// Send standard input's lines as str (without the line end) instead
        /// of parsing each as JSON.
        #[arg(long)]
        raw: bool,
    },
    /// Copies the directory SRC to DEST on every gateway at once (unchanged
    /// files are skipped); a progress bar when stderr is a terminal.
    Rsync {
        /// The local directory to send.
        #[arg(value_name = "SRC")]
        src: PathBuf,
        /// A gateway spec; repeat for several gateways. Default: one `popen`.
        #[arg(long = "gw", value_name = "SPEC")]
        gw: Vec<String>,
        /// The directory to create or update on each gateway.
        #[arg(value_name = "DEST")]
        dest: PathBuf,
        /// Remove what SRC does not have from DEST.
        #[arg(long)]
        delete: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            gw,
            source,
            file,
            raw,
        } => {
            let source = match (source, file) {
                (Some(s), _) => s,
                (None, Some(f)) => match std::fs::read_to_string(&f) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("execnet: cannot read {}: {e}", f.display());
                        return ExitCode::from(2);
                    }
                },
                (None, None) => {
                    eprintln!("execnet: give -c SOURCE or FILE");
                    return ExitCode::from(2);
                }
            };
            let specs = if gw.is_empty() {
                vec!["popen".to_string()]
            } else {
                gw
            };
            run(&specs, &source, raw)
        }
        Command::Rsync {
            src,
            gw,
            dest,
            delete,
        } => {
            let specs = if gw.is_empty() {
                vec!["popen".to_string()]
            } else {
                gw
            };
            rsync(&src, &specs, &dest, delete)
        }
    }
}

fn rsync(
    src: &std::path::Path,
    specs: &[String],
    dest: &std::path::Path,
    delete: bool,
) -> ExitCode {
    use std::io::IsTerminal;
    let group = match Group::with_specs(specs) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("execnet: cannot start the gateways: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sync = execnet::blocking::RSync::new(src);
    for gw in &group {
        sync.add_target(&gw, dest, delete);
    }
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        sync.progress(move |p| match p.phase {
            execnet::Phase::Listed => {
                bar.set_message(format!("{} files listed", p.stats.files_listed));
            }
            execnet::Phase::Compared => {
                bar.set_length(p.stats.bytes_to_send);
                bar.set_message(format!("{} files to send", p.stats.files_to_send));
            }
            execnet::Phase::Sending => {
                bar.set_position(p.stats.bytes_sent);
                if let Some(path) = p.path {
                    bar.set_message(path.display().to_string());
                }
            }
            _ => bar.finish_and_clear(),
        });
    }
    let result = sync.send();
    group.terminate(None);
    match result {
        Ok(s) => {
            eprintln!(
                "execnet: {} files ({} bytes) to {} gateway(s): {} files sent ({} bytes), {} unchanged, {} deleted",
                s.files_listed,
                s.bytes_listed,
                s.targets,
                s.files_sent,
                s.bytes_sent,
                s.files_skipped,
                s.deleted
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("execnet: rsync failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(specs: &[String], source: &str, raw: bool) -> ExitCode {
    let group = Group::new();
    // Start all gateways at once.
    let started: Vec<Result<Gateway, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| {
                let g = &group;
                s.spawn(move || g.makegateway(spec))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Spec("gateway start panicked".into())))
            })
            .collect()
    });
    let mut gateways = Vec::new();
    for (spec, r) in specs.iter().zip(started) {
        match r {
            Ok(g) => gateways.push(g),
            Err(e) => {
                eprintln!("execnet: cannot start gateway {spec:?}: {e}");
                group.terminate(None);
                return ExitCode::FAILURE;
            }
        }
    }
    let mut channels = Vec::new();
    for gw in &gateways {
        match gw.remote_exec(source) {
            Ok(ch) => channels.push((gw.id().to_string(), ch)),
            Err(e) => {
                eprintln!("execnet: [{}] {e}", gw.id());
                group.terminate(None);
                return ExitCode::FAILURE;
            }
        }
    }
    // Detached, not scoped: the remote code may end without reading its
    // input, and a read of a terminal or an idle pipe must not keep the
    // command alive after that.
    let bad_input = Arc::new(AtomicBool::new(false));
    {
        let channels: Vec<Channel> = channels.iter().map(|(_, ch)| ch.clone()).collect();
        let bad_input = Arc::clone(&bad_input);
        std::thread::spawn(move || {
            if let Err(e) = feed_stdin(&channels, raw) {
                eprintln!("execnet: {e}");
                bad_input.store(true, Ordering::Relaxed);
            }
            for ch in &channels {
                let _ = ch.close_sending();
            }
        });
    }
    let prefix = channels.len() > 1;
    let out = Mutex::new(std::io::stdout());
    let failed = std::thread::scope(|s| {
        let handles: Vec<_> = channels
            .iter()
            .map(|(id, ch)| {
                let out = &out;
                s.spawn(move || print_items(id, ch, prefix, out))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .filter(|ok| !ok)
            .count()
    });
    group.terminate(None);
    if failed > 0 || bad_input.load(Ordering::Relaxed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Sends each line of standard input to every channel still open, until
/// end of input. Fails on a read error or (without `raw`) a line that is
/// not JSON; blank lines are skipped then.
fn feed_stdin(channels: &[Channel], raw: bool) -> Result<(), String> {
    let mut open: Vec<&Channel> = channels.iter().collect();
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading standard input: {e}")),
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let value = if raw {
            match std::str::from_utf8(text) {
                Ok(s) => Value::str(s),
                // Not text: the remote gets the bytes as they are.
                Err(_) => Value::Bytes(text.to_vec()),
            }
        } else {
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<serde_json::Value>(text) {
                Ok(v) => from_json(v),
                Err(e) => {
                    return Err(format!(
                        "standard input line {n} is not JSON ({e}); use --raw to send lines as text"
                    ))
                }
            }
        };
        // A channel that ended (its code finished) takes no more input;
        // the others still get every line.
        open.retain(|ch| ch.send_value(&value).is_ok());
        if open.is_empty() {
            return Ok(());
        }
    }
    Ok(())
}

/// A JSON value as the Python value it reads as: objects are dicts, arrays
/// lists, integers `int` (beyond 64 bits: `float`, as JSON parsers read them).
fn from_json(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::from_i128(i128::from(u)),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Str(s),
        J::Array(xs) => Value::List(xs.into_iter().map(from_json).collect()),
        J::Object(m) => Value::Dict(
            m.into_iter()
                .map(|(k, x)| (Value::Str(k), from_json(x)))
                .collect(),
        ),
    }
}

/// Prints every item of one gateway's channel; returns whether its code
/// succeeded.
fn print_items(id: &str, ch: &Channel, prefix: bool, out: &Mutex<std::io::Stdout>) -> bool {
    loop {
        match ch.receive_value(None) {
            Ok(v) => {
                let mut line = String::new();
                if prefix {
                    line.push_str(id);
                    line.push(' ');
                }
                json(&v, &mut line);
                line.push('\n');
                let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                let _ = o.write_all(line.as_bytes());
                let _ = o.flush();
            }
            Err(Error::EndOfChannel) => return true,
            Err(Error::Remote(r)) => {
                eprintln!(
                    "execnet: [{id}] remote error:\n{}",
                    r.formatted().trim_end()
                );
                return false;
            }
            Err(e) => {
                eprintln!("execnet: [{id}] {e}");
                return false;
            }
        }
    }
}

/// Writes `v` as JSON. Beyond JSON's types: tuples and sets are arrays, dicts
/// with non-string keys are arrays of `[key, value]`, big integers are
/// numbers, NaN/inf are strings, complex is `[re, im]`, bytes are a string
/// when valid UTF-8 (else an array of byte values), channels are
/// `{"channel": id}`.
fn json(v: &Value, out: &mut String) {
    use std::fmt::Write as _;
    let string = |s: &str, out: &mut String| {
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    };
    let float = |f: f64, out: &mut String| {
        if f.is_finite() {
            let _ = write!(out, "{f:?}");
        } else {
            string(&f.to_string(), out);
        }
    };
    let seq = |items: &[Value], out: &mut String| {
        out.push('[');
        for (i, x) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json(x, out);
        }
        out.push(']');
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::BigInt(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Float(f) => float(*f, out),
        Value::Complex(re, im) => {
            out.push('[');
            float(*re, out);
            out.push(',');
            float(*im, out);
            out.push(']');
        }
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => string(s, out),
            Err(_) => {
                let items: Vec<Value> = b.iter().map(|&x| Value::Int(i64::from(x))).collect();
                seq(&items, out)
            }
        },
        Value::Str(s) => string(s, out),
        Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => seq(xs, out),
        Value::Dict(pairs) => {
            if pairs.iter().all(|(k, _)| matches!(k, Value::Str(_))) {
                out.push('{');
                for (i, (k, x)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json(k, out);
                    out.push(':');
                    json(x, out);
                }
                out.push('}');
            } else {
                out.push('[');
                for (i, (k, x)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push('[');
                    json(k, out);
                    out.push(',');
                    json(x, out);
                    out.push(']');
                }
                out.push(']');
            }
        }
        Value::Channel(c) => {
            let _ = write!(out, "{{\"channel\":{}}}", c.id().0);
        }
    }
}
