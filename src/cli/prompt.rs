//! `init`'s questions on a terminal: each setting not given as a flag, with
//! its default in brackets (Enter keeps it). Questions go to stderr.

use std::io::{BufRead, Write};

use imgbuild::commands::CommandError;
use imgbuild::commands::init::{InitSettings, KeySource, parse_node, read_key_arg};

fn ask_line(question: &str, default: &str) -> Result<Option<String>, CommandError> {
    eprint!("{question} [{default}]: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CommandError::Failed(e.into()))?;
    if n == 0 {
        return Err(CommandError::Usage(anyhow::anyhow!(
            "init: input ended before every question was answered"
        )));
    }
    let line = line.trim();
    Ok((!line.is_empty()).then(|| line.to_string()))
}

/// Asks for what `s` lacks; an empty answer keeps the default.
pub fn ask(s: &mut InitSettings) -> Result<(), CommandError> {
    if s.name.is_none() {
        s.name = ask_line("Cluster name", "homelab")?;
    }
    if s.domain.is_none() {
        s.domain = ask_line("DNS domain of the nodes", "home.arpa")?;
    }
    if s.nodes.is_empty() {
        loop {
            let Some(a) = ask_line(
                "Nodes as NAME=BOARD[@SLOT], space-separated (boards: rk1, cm4, nuc; the first is the server)",
                "node01=rk1@1 node02=rk1@2 node03=rk1@3 node04=rk1@4",
            )?
            else {
                break;
            };
            match a
                .split_whitespace()
                .map(parse_node)
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(n) => {
                    s.nodes = n;
                    break;
                }
                Err(e) => eprintln!("{e}"),
            }
        }
    }
    if s.server.is_none() {
        s.server = ask_line(
            "Address or DNS name of the cluster API (the first server)",
            "<first node>.<domain>",
        )?;
    }
    if s.admin_user.is_none() {
        s.admin_user = ask_line("Admin user", "admin")?;
    }
    if let KeySource::Search(_) = s.ssh_keys {
        while let Some(k) = ask_line("Admin SSH public key (file or key)", "first ~/.ssh/*.pub")? {
            match read_key_arg(&k) {
                Ok(key) => {
                    s.ssh_keys = KeySource::Given(vec![key]);
                    break;
                }
                Err(e) => eprintln!("{e}"),
            }
        }
    }
    if s.bmc.is_none() {
        s.bmc = ask_line(
            "Turing Pi BMC host (if a node sits in a Turing Pi)",
            "turingpi.local",
        )?;
    }
    Ok(())
}
