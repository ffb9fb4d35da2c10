//! Profiles and configuration, one binary: `check` and its refusals
//! (`profiles`), bad inputs and their exit statuses (`errors`), a new user's
//! first steps away from the repository (`newcomer`) and the CLI's commands
//! and flags (`cli`).

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod errors;
mod newcomer;
mod profiles;
