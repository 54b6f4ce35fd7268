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

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use clap::{Parser, Subcommand};
use execnet::blocking::{Gateway, Group};
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
    /// Runs SOURCE (or FILE) on every gateway; prints received items as JSON lines.
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
        Command::Run { gw, source, file } => {
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
            run(&specs, &source)
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

fn run(specs: &[String], source: &str) -> ExitCode {
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
    let prefix = gateways.len() > 1;
    let out = Mutex::new(std::io::stdout());
    let failed = std::thread::scope(|s| {
        let handles: Vec<_> = gateways
            .iter()
            .map(|gw| {
                let out = &out;
                s.spawn(move || run_one(gw, source, prefix, out))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .filter(|ok| !ok)
            .count()
    });
    group.terminate(None);
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs the source on one gateway; returns whether it succeeded.
fn run_one(gw: &Gateway, source: &str, prefix: bool, out: &Mutex<std::io::Stdout>) -> bool {
    let ch = match gw.remote_exec(source) {
        Ok(ch) => ch,
        Err(e) => {
            eprintln!("execnet: [{}] {e}", gw.id());
            return false;
        }
    };
    loop {
        match ch.receive_value(None) {
            Ok(v) => {
                let mut line = String::new();
                if prefix {
                    line.push_str(gw.id());
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
                    "execnet: [{}] remote error:\n{}",
                    gw.id(),
                    r.formatted().trim_end()
                );
                return false;
            }
            Err(e) => {
                eprintln!("execnet: [{}] {e}", gw.id());
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
