//! Shell completion: clap's scripts for the commands and flags, plus resource and profile
//! names asked of `bamf __complete` when the shell completes them (bash, zsh, fish).

use std::time::Duration;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::Globals;
use crate::cli::{Cli, CompleteArgs, CompleteWhat};
use crate::config::Home;
use crate::error::{Error, Result, Status};
use crate::output;
use crate::session::Ctx;

/// A shell waits for completions: the API gets this long to list resources.
const LISTING_DEADLINE: Duration = Duration::from_secs(3);

/// Commands whose first operand is a resource.
const RESOURCE_COMMANDS: &str = "ssh pipe tcp psql sftp";

/// bash: resource names after the commands that take one (with `user@` kept), profile
/// names after `profiles use|rm`; everything else is clap's.
const BASH: &str = r#"
# Resource and profile names, asked of bamf itself.
_bamf_dynamic() {
    local cur="${COMP_WORDS[COMP_CWORD]}" sub="" parent="" i word
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        case "$word" in
            --profile) ((i++)) ;;
            -*) ;;
            *) if [[ -z "$parent" && "$word" == profiles ]]; then parent=profiles
               else sub="$word"; break; fi ;;
        esac
    done
    if [[ $i -eq $((COMP_CWORD - 1)) && "$cur" != -* ]]; then
        if [[ "$parent" == profiles && ( "$sub" == use || "$sub" == rm ) ]]; then
            COMPREPLY=( $(compgen -W "$("${COMP_WORDS[0]}" __complete profiles 2>/dev/null)" -- "$cur") )
            return 0
        fi
        case " RESOURCE_COMMANDS " in
            *" $sub "*)
                if [[ -z "$parent" ]]; then
                    local user=""
                    if [[ "$cur" == *@* ]]; then user="${cur%%@*}@"; cur="${cur#*@}"; fi
                    COMPREPLY=( $(compgen -P "$user" -W "$("${COMP_WORDS[0]}" __complete resources 2>/dev/null)" -- "$cur") )
                    return 0
                fi ;;
        esac
    fi
    _bamf "$@"
}
"#;

/// zsh: a completer for resource operands.
const ZSH: &str = r#"
_bamf_resources() {
    local -a names
    names=(${(f)"$(${words[1]} __complete resources 2>/dev/null)"})
    _describe -t resources 'resource' names
}
_bamf_profiles() {
    local -a names
    names=(${(f)"$(${words[1]} __complete profiles 2>/dev/null)"})
    _describe -t profiles 'profile' names
}
"#;

/// fish: resource and profile names.
const FISH: &str = r#"
complete -c bamf -n '__fish_seen_subcommand_from RESOURCE_COMMANDS' -f -a '(bamf __complete resources 2>/dev/null)'
complete -c bamf -n '__fish_seen_subcommand_from profiles; and __fish_seen_subcommand_from use rm' -f -a '(bamf __complete profiles 2>/dev/null)'
"#;

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bamf", &mut out);
    let base = String::from_utf8_lossy(&out).into_owned();
    match shell {
        Shell::Bash => {
            let base = base.replace("complete -F _bamf ", "complete -F _bamf_dynamic ");
            base + &BASH.replace("RESOURCE_COMMANDS", RESOURCE_COMMANDS)
        }
        Shell::Zsh => {
            // Resource operands (`':resource -- …:_default'`) and profile names complete
            // from bamf; the helpers go before the script's last block, which calls `_bamf`
            // when the file is autoloaded.
            let base: String = base
                .lines()
                .map(|line| {
                    let hooked = if line.contains("':resource -- ") {
                        line.replace(":_default'", ":_bamf_resources'")
                    } else if line.contains("':name -- Profile name") {
                        line.replace(":_default'", ":_bamf_profiles'")
                    } else {
                        line.to_owned()
                    };
                    hooked + "\n"
                })
                .collect();
            match base.find("if [ \"$funcstack[1]\" = \"_bamf\" ]") {
                Some(at) => format!("{}{ZSH}\n{}", &base[..at], &base[at..]),
                None => base + ZSH,
            }
        }
        Shell::Fish => base + &FISH.replace("RESOURCE_COMMANDS", RESOURCE_COMMANDS),
        _ => base,
    }
}

/// `bamf __complete WHAT [PREFIX]`: candidates, one per line.
///
/// # Errors
///
/// No login, or the API does not answer in time (the scripts discard stderr).
pub async fn candidates(home: &Home, globals: &Globals, args: &CompleteArgs) -> Result<()> {
    let mut names: Vec<String> = match args.what {
        CompleteWhat::Profiles => home
            .profiles()?
            .iter()
            .map(|p| p.name().to_string())
            .collect(),
        CompleteWhat::Resources => {
            let profile = home.select(globals.profile.as_ref())?;
            let ctx = Ctx::load(profile, &globals.net)?;
            tokio::time::timeout(LISTING_DEADLINE, ctx.user().resources())
                .await
                .map_err(|_| Error::of(Status::Offline, "the API did not answer in time"))?
                .map_err(Error::api)?
                .items
                .into_iter()
                .map(|r| r.name)
                .collect()
        }
    };
    names.sort();
    for name in names.iter().filter(|n| n.starts_with(&args.prefix)) {
        output::line(name);
    }
    Ok(())
}
