//! The command line: clap types (`args`), their resolution with the
//! environment into settings (`settings`), dispatch to one command each, and
//! what gets printed (`report`). Touches no image and no network itself.

pub mod args;
mod docs;
mod prompt;
pub mod report;
pub mod settings;

use std::collections::BTreeMap;

use imgbuild::commands::{self, Result, Workspace};
use imgbuild::config::profile::Role;

use args::{BmcCommand, CacheCommand, Cli, Command, ImportCommand, OverlaysCommand, TokenRole};
use settings::{Common, Environment};

/// Runs the command `cli` names.
pub fn run(cli: Cli, env: &Environment) -> Result<()> {
    let common = Common::resolve(cli.global, env)?;
    let paths = &common.paths;
    match cli.command {
        None => build(&common, &cli.build, env),
        Some(Command::Build(b)) => build(&common, &b, env),
        Some(Command::Fetch { boards, all }) => {
            report::fetched(&commands::fetch::fetch(paths, &boards, all, &common.fetch)?);
            Ok(())
        }
        Some(Command::Secrets {
            print_token,
            known_hosts,
            generate,
        }) => {
            if generate {
                commands::secrets::generate(paths, common.build_time)?;
            }
            match (print_token, known_hosts) {
                (Some(role), _) => {
                    let role = match role {
                        TokenRole::Server => Role::Server,
                        TokenRole::Agent => Role::Agent,
                    };
                    println!(
                        "{}",
                        commands::secrets::join_token(paths, role, common.build_time)?
                    );
                }
                (None, true) => print!("{}", commands::secrets::known_hosts(paths)?),
                (None, false) => {
                    report::secrets_inventory(&paths.secrets, &commands::secrets::inventory(paths)?)
                }
            }
            Ok(())
        }
        Some(Command::Seal {
            image,
            output,
            out_dir,
            node,
            json,
        }) => {
            let ws = Workspace::load(paths)?;
            let settings = commands::seal::SealSettings {
                output,
                out_dir,
                node,
                build_time: common.build_time,
            };
            report::sealed(json, &commands::seal::seal(&ws, &image, &settings)?)
        }
        Some(Command::Verify { image, json }) => {
            report::verified(json, &commands::verify::verify(&image)?)
        }
        Some(Command::Usb {
            node,
            device,
            iso,
            yes,
            out_dir,
            json,
        }) => {
            let settings = common.usb(device, iso, yes, out_dir, env);
            let ws = Workspace::load(paths)?;
            report::delivered(json, &commands::usb::usb(&ws, &node, &settings)?)
        }
        Some(Command::Flash { node, image, flash }) => {
            let settings = common.flash(&flash, env)?;
            let ws = Workspace::load(paths)?;
            let images: BTreeMap<_, _> = image.map(|i| (node.clone(), i)).into_iter().collect();
            commands::flash::flash(&ws, &[node], &images, &settings, false)?;
            Ok(())
        }
        Some(Command::Deploy {
            nodes,
            json,
            flash,
            wait,
            wait_args,
        }) => {
            let mut settings = common.flash(&flash, env)?;
            let wait = wait.then(|| settings::wait(&wait_args, &flash.out_dir));
            settings.wait = wait.clone();
            let ws = Workspace::load(paths)?;
            let names = commands::flash::deploy_nodes(&ws, &nodes)?;
            let reports = commands::flash::flash(&ws, &names, &BTreeMap::new(), &settings, true)?;
            match wait {
                None => report::delivered(json, &reports),
                Some(w) => {
                    if !json {
                        report::delivered(false, &reports)?;
                    }
                    let waited = commands::wait::wait(&ws, &names, &w)?;
                    report::deployed_and_waited(json, &reports, &waited)
                }
            }
        }
        Some(Command::Kubeconfig {
            output,
            merge,
            force,
            validity,
            api,
        }) => {
            let s = settings::kubeconfig(output, merge, force, validity, api.server, env)?;
            let ws = Workspace::load(paths)?;
            report::kubeconfig(&commands::kubeconfig::kubeconfig(&ws, &s)?);
            Ok(())
        }
        Some(Command::Wait {
            nodes,
            wait,
            out_dir,
            json,
        }) => {
            let ws = Workspace::load(paths)?;
            let w = settings::wait(&wait, &out_dir);
            report::waited(json, &commands::wait::wait(&ws, &nodes, &w)?)
        }
        Some(Command::Status {
            timeout,
            out_dir,
            api,
            json,
        }) => {
            let ws = Workspace::load(paths)?;
            let w = imgbuild::commands::wait::WaitSettings {
                timeout,
                interval: timeout,
                server: api.server,
                out_dir,
            };
            report::status(json, &commands::status::status(&ws, &w, common.build_time)?)
        }
        Some(Command::Bmc(BmcCommand::Status { bmc, json })) => {
            let options = settings::bmc_options(&bmc, env);
            report::bmc_status(json, &commands::bmc::status(paths, &options)?)
        }
        Some(Command::Unpack {
            input,
            output,
            max_size,
        }) => {
            let (format, size) = commands::unpack::unpack(&input, &output, max_size.0)?;
            report::unpacked(&output, format, size);
            Ok(())
        }
        Some(Command::Cache(CacheCommand::List { json })) => {
            report::cache_listing(json, &commands::cache::list(paths, &common.fetch)?)
        }
        Some(Command::Cache(CacheCommand::Clean { all })) => {
            report::cache_cleaned(&commands::cache::clean(paths, &common.fetch, all)?);
            Ok(())
        }
        Some(Command::Overlays(OverlaysCommand::Export { dir, force })) => {
            report::exported(&dir, &commands::overlays::export(&dir, force)?);
            Ok(())
        }
        Some(Command::Overlays(OverlaysCommand::List { json })) => {
            report::overlay_list(json, &commands::overlays::list(paths)?)
        }
        Some(Command::Completions { shell }) => docs::completions(shell),
        Some(Command::Man { out_dir }) => docs::man(out_dir.as_deref()),
        Some(Command::Import(ImportCommand::Ansible {
            inventory,
            group_vars,
            out_dir,
            name,
            admin_user,
            ssh_key,
            json,
        })) => {
            let s = commands::import::ImportSettings {
                inventory,
                group_vars,
                out_dir,
                name,
                admin_user,
                ssh_keys: settings::key_source(&ssh_key, env)?,
            };
            report::imported(
                json,
                &commands::import::import_ansible(&s, common.build_time)?,
            )
        }
        Some(Command::Diff { a, b, json }) => {
            let (a, b) = match b {
                Some(b) => (a, b),
                None => (commands::diff::base_of(&a, &common.fetch)?, a),
            };
            let d = commands::diff::diff(&a, &b)?;
            report::diffed(json, &d)?;
            if !d.equal {
                // Like diff(1): 1 means "different", not a failure worth a message.
                use std::io::Write;
                let _ = std::io::stdout().flush();
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Init(a)) => {
            let s = settings::init(a, env)?;
            report::initialised(&commands::init::init(&s, common.build_time)?);
            Ok(())
        }
        Some(Command::Check) => {
            report::checked(&commands::check::check(paths, common.build_time)?);
            Ok(())
        }
        Some(Command::Inspect { image, json }) => {
            report::inspection(json, &commands::inspect::inspect(paths, &image)?)
        }
        Some(Command::Render {
            node,
            contents,
            json,
        }) => report::rendered(
            json,
            contents,
            &commands::render::render_with_additions(paths, &node, common.build_time)?,
        ),
    }
}

fn build(common: &Common, b: &args::BuildArgs, env: &Environment) -> Result<()> {
    let settings = common.build(b, env)?;
    report::built(b.json, &commands::build::build(&common.paths, &settings)?)
}
