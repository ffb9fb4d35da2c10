//! Shell completions (clap_complete) and man pages (clap_mangen), generated
//! from the same clap definitions the parser uses, so they never drift.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use imgbuild::commands::{CommandError, Result};

use super::args::Cli;

/// Commands whose first argument is a node name.
const NODE_COMMANDS: &str = "render flash usb wait";

/// Node names: the stems of `<profiles>/nodes/*.yaml`, where `<profiles>` is
/// `--profiles`, `$IMGBUILD_PROFILES` or `profiles` (read by the shell at
/// completion time, so new nodes complete without regenerating the script).
const BASH_NODES: &str = r#"
# Node names from the profiles for: NODE_COMMANDS.
_imgbuild_nodes() {
    local dir="${IMGBUILD_PROFILES:-profiles}" i
    for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
        [[ ${COMP_WORDS[i]} == --profiles ]] && dir="${COMP_WORDS[i+1]}"
    done
    local f names=()
    for f in "$dir"/nodes/*.yaml; do
        [[ -e $f ]] && names+=("$(basename "$f" .yaml)")
    done
    printf '%s\n' "${names[@]}"
}
_imgbuild_with_nodes() {
    local cmd="${COMP_WORDS[1]}" cur="${COMP_WORDS[COMP_CWORD]}"
    if [[ " NODE_COMMANDS " == *" $cmd "* && $cur != -* && $COMP_CWORD -ge 2 ]]; then
        COMPREPLY=($(compgen -W "$(_imgbuild_nodes)" -- "$cur"))
        return 0
    fi
    _imgbuild "$@"
}
complete -F _imgbuild_with_nodes -o nosort -o bashdefault -o default imgbuild
"#;

const ZSH_NODES: &str = r#"
# Node names from the profiles for: NODE_COMMANDS.
_imgbuild_with_nodes() {
    local dir="${IMGBUILD_PROFILES:-profiles}"
    local i=${words[(I)--profiles]}
    (( i > 0 )) && dir="${words[i+1]}"
    if (( CURRENT >= 3 )) && [[ " NODE_COMMANDS " == *" ${words[2]} "* && ${words[CURRENT]} != -* ]]; then
        local -a nodes
        nodes=(${dir}/nodes/*.yaml(N:t:r))
        compadd -a nodes
        return
    fi
    _imgbuild "$@"
}
# Loaded from fpath (autoloaded as _imgbuild) or sourced: either way the
# wrapper becomes imgbuild's completion function.
compdef _imgbuild_with_nodes imgbuild
if [ "$funcstack[1]" = "_imgbuild" ]; then
    _imgbuild_with_nodes "$@"
fi
"#;

/// The block clap_complete ends a zsh script with, replaced by ours.
const ZSH_TAIL: &str = r#"if [ "$funcstack[1]" = "_imgbuild" ]; then
    _imgbuild "$@"
else
    compdef _imgbuild imgbuild
fi
"#;

pub fn completions(shell: Shell) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "imgbuild", &mut out);
    match shell {
        Shell::Bash => out.extend(BASH_NODES.replace("NODE_COMMANDS", NODE_COMMANDS).bytes()),
        Shell::Zsh => {
            let text = String::from_utf8_lossy(&out).into_owned();
            let nodes = ZSH_NODES.replace("NODE_COMMANDS", NODE_COMMANDS);
            // Without the expected tail (a new clap_complete), keep its own
            // script: completion without node names beats a broken one.
            if let Some(head) = text.strip_suffix(ZSH_TAIL) {
                out = format!("{head}{nodes}").into_bytes();
            }
        }
        _ => {}
    }
    write_stdout(&out)
}

pub fn man(out_dir: Option<&Path>) -> Result<()> {
    let cmd = Cli::command();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .and_then(|()| clap_mangen::generate_to(cmd, dir))
                .map_err(|e| CommandError::Failed(anyhow::anyhow!("{}: {e}", dir.display())))?;
            println!("wrote the man pages to {}", dir.display());
            Ok(())
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| CommandError::Failed(e.into()))?;
            write_stdout(&out)
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CommandError::Failed(e.into())),
    }
}
