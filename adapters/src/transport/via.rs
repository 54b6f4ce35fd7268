//! `via`: a worker started from another gateway's host, its bytes relayed
//! through a channel of that gateway (`popen//via=GWID`,
//! `ssh=HOST//via=GWID`).
//!
//! This module decides *what* runs there: the target's argv (popen: GWID's
//! own interpreter unless `python=`; ssh: the same `ssh …` command line a
//! direct start would run, executed from GWID's host) and the probe that
//! explains a failed start. *How* it is relayed (a small relay in GWID's
//! worker, the channel carrying stdout, stderr and the exit status) is
//! `crate::relay`, reached through the [`Through`] trait, so that the
//! transports stay below gateways and channels.
//!
//! If GWID ends first, the relay channel ends with GWID's error, the target
//! sees the end of its stdin, and every channel of the target gateway ends
//! with an error naming GWID.

use super::process::source_loader;
use super::ssh::{Probe, SshOptions};
use super::{Through, Transport};
use crate::error::{Error, Result};
use crate::transport::popen::PopenOptions;

/// Starts `popen` through `via`: the target runs `opts.python` (default:
/// the relaying worker's interpreter) with the worker arguments.
pub(crate) async fn connect_popen(
    via: &dyn Through,
    opts: &PopenOptions,
) -> Result<(Transport, Probe)> {
    let mut argv: Vec<Option<String>> = match &opts.python {
        Some(p) => p.iter().cloned().map(Some).collect(),
        None => vec![None],
    };
    argv.extend(
        opts.setup
            .interpreter_args(&source_loader())
            .into_iter()
            .map(Some),
    );
    let python = opts
        .python
        .as_ref()
        .map_or_else(|| "(its python)".to_string(), shell_words::join);
    let description = format!("popen {python} via {}", via.id());
    let (t, control) = via
        .relay_process(argv, opts.setup.env.clone(), description)
        .await?;
    let probe = Probe {
        control,
        host: via.id().to_string(),
        python,
        ssh: false,
    };
    Ok((t, probe))
}

/// Starts `ssh …` from `via`'s host (no connection sharing there).
pub(crate) async fn connect_ssh(
    via: &dyn Through,
    opts: &SshOptions,
) -> Result<(Transport, Probe)> {
    if opts.reuse {
        return Err(Error::Spec(
            "ssh_reuse is not supported together with via=".into(),
        ));
    }
    let argv = opts.argv(None).into_iter().map(Some).collect();
    let description = format!("ssh {} via {}", shell_words::join(&opts.args), via.id());
    let (t, control) = via.relay_process(argv, Vec::new(), description).await?;
    let probe = Probe {
        control,
        host: opts.host().to_string(),
        python: opts.python.clone(),
        ssh: true,
    };
    Ok((t, probe))
}
