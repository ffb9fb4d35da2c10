//! The command line: clap types (`args`), their resolution with the
//! environment into settings (`settings`), dispatch to one command each, and
//! what gets printed (`report`, with the JSON documents in `json`). Touches
//! no image and no network itself.

pub mod args;
mod docs;
mod json;
mod prompt;
pub mod report;
pub mod settings;

use imgbuild::commands::{self, Result};

use args::{BmcCommand, CacheCommand, Cli, Command, ImportCommand, OverlaysCommand};
use settings::{Common, Environment};

/// How a command that did not fail ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// `diff`: the images differ (exit 1, as diff(1), with no error message).
    Differ,
}

/// A target that is a misspelt verb (`imgbuild chek`): says which verb.
fn verb_hint(
    e: imgbuild::commands::CommandError,
    a: &args::BuildArgs,
) -> imgbuild::commands::CommandError {
    use imgbuild::commands::CommandError;
    let CommandError::Usage(inner) = &e else {
        return e;
    };
    let [word] = a.targets.as_slice() else {
        return e;
    };
    let Some(word) = word.to_str().filter(|w| !w.contains(['.', '/'])) else {
        return e;
    };
    if inner.to_string().contains("\nhint:") {
        return e;
    }
    use clap::CommandFactory;
    let cmd = args::Cli::command();
    let closest = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .map(|v| (strsim::levenshtein(word, &v), v))
        .filter(|(d, v)| *d <= 2 && *d < v.len())
        .min();
    match closest {
        Some((_, verb)) => CommandError::Usage(anyhow::anyhow!(
            "{inner}\nhint: did you mean `imgbuild {verb}`?"
        )),
        None => e,
    }
}

/// Runs the command `cli` names: one line per verb, settings in, report out.
pub fn run(cli: Cli, env: &Environment) -> Result<Outcome> {
    let c = &Common::resolve(cli.global, env)?;
    let paths = &c.paths;
    let done = match cli.command.unwrap_or(Command::Build(cli.build)) {
        Command::Diff { a, b, json } => {
            return report::diffed(json, &commands::diff::diff(&a, b.as_deref(), &c.fetch)?);
        }
        Command::Build(a) => report::built(
            a.json,
            &commands::build::build(paths, &c.build(&a, env)?).map_err(|e| verb_hint(e, &a))?,
        ),
        Command::Check { json } => {
            report::checked(json, &commands::check::check(paths, c.build_time)?)
        }
        Command::Fetch { boards, all, json } => report::fetched(
            json,
            &commands::fetch::fetch(paths, &boards, all, &c.fetch)?,
        ),
        Command::Secrets(a) => report::secrets(&commands::secrets::secrets(paths, &c.secrets(&a))?),
        Command::Seal(a) => report::sealed(
            a.json,
            &commands::seal::seal(&c.workspace()?, &a.image, &c.seal(&a))?,
        ),
        Command::Verify { image, json } => {
            report::verified(json, &commands::verify::verify(&image)?)
        }
        Command::Usb(a) => report::delivered(
            a.json,
            &commands::usb::usb(&c.workspace()?, &a.node, &c.usb(&a, env))?,
        ),
        // Flashing reports on stderr as it goes (the delivery loop's summary).
        Command::Flash(a) => commands::flash::flash_node(paths, &c.flash_node(&a, env)?).map(drop),
        Command::Deploy(a) => report::deployed(
            a.json,
            &commands::flash::deploy(paths, &c.deploy(&a, env)?, &mut |r| {
                report::deploying(a.json, r)
            })?,
        ),
        Command::Kubeconfig(a) => report::kubeconfig(
            a.json,
            &commands::kubeconfig::kubeconfig(paths, &settings::kubeconfig(&a, env)?)?,
        ),
        Command::Wait(a) => report::waited(
            a.json,
            &commands::wait::wait(&c.workspace()?, &a.nodes, &settings::wait_command(&a))?,
        ),
        Command::Status(a) => report::status(
            a.json,
            &commands::status::status(&c.workspace()?, &settings::status(&a), c.build_time)?,
        ),
        Command::Bmc(BmcCommand::Status { bmc, json }) => report::bmc_status(
            json,
            &commands::bmc::status(paths, &settings::bmc_options(&bmc, env))?,
        ),
        Command::Unpack {
            input,
            output,
            max_size,
        } => report::unpacked(
            &output,
            commands::unpack::unpack(&input, &output, max_size.0)?,
        ),
        Command::Cache(CacheCommand::List { json }) => {
            report::cache_listing(json, &commands::cache::list(paths, &c.fetch)?)
        }
        Command::Cache(CacheCommand::Clean { all, json }) => {
            report::cache_cleaned(json, &commands::cache::clean(paths, &c.fetch, all)?)
        }
        Command::Overlays(OverlaysCommand::Export { dir, force }) => {
            report::exported(&dir, &commands::overlays::export(&dir, force)?)
        }
        Command::Overlays(OverlaysCommand::List { json }) => {
            report::overlay_list(json, &commands::overlays::list(paths)?)
        }
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { out_dir } => docs::man(out_dir.as_deref()),
        Command::Import(ImportCommand::Ansible(a)) => report::imported(
            a.json,
            &commands::import::import_ansible(&c.import(a, env)?, c.build_time)?,
        ),
        Command::Init(a) => report::initialised(
            a.json,
            &commands::init::init(&settings::init(a, env)?, c.build_time)?,
        ),
        Command::Inspect { image, json } => {
            report::inspection(json, &commands::inspect::inspect(paths, &image)?)
        }
        Command::Render {
            node,
            contents,
            json,
        } => report::rendered(
            json,
            contents,
            &commands::render::render_with_additions(paths, &node, c.build_time)?,
        ),
    };
    done.map(|()| Outcome::Success)
}
