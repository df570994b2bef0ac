# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_meshd_global_optspecs
    string join \n config= h/help V/version
end

function __fish_meshd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_meshd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_meshd_using_subcommand
    set -l cmd (__fish_meshd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c meshd -n "__fish_meshd_needs_command" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_needs_command" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_needs_command" -s V -l version -d 'Print version'
complete -c meshd -n "__fish_meshd_needs_command" -f -a "run" -d 'Run the daemon (the default)'
complete -c meshd -n "__fish_meshd_needs_command" -f -a "init" -d 'Prepare data_dir and a new mesh CA on the first host of a mesh'
complete -c meshd -n "__fish_meshd_needs_command" -f -a "join" -d 'Join a mesh with a token from `meshctl token create` (run on any other host)'
complete -c meshd -n "__fish_meshd_needs_command" -f -a "dev" -d 'A local mesh on loopback to try things with; stops on Ctrl-C'
complete -c meshd -n "__fish_meshd_needs_command" -f -a "check-config" -d 'Validate the config file: exit 0 when meshd would start with it, 2 (naming the line and key) when not. Changes nothing'
complete -c meshd -n "__fish_meshd_needs_command" -f -a "upgrade" -d 'Upgrade the running meshd without dropping a connection: it starts the binary now at its path (a package upgrade replaced it), hands it every socket, and drains. Waits until the new process serves the admin socket; exit 0 then, 1 if not'
complete -c meshd -n "__fish_meshd_needs_command" -f -a "bridge" -d 'The Kubernetes bridge\'s housekeeping'
complete -c meshd -n "__fish_meshd_needs_command" -f -a "completions" -d 'Print shell completions'
complete -c meshd -n "__fish_meshd_needs_command" -f -a "man" -d 'Print the man page (roff), as the package installs it'
complete -c meshd -n "__fish_meshd_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshd -n "__fish_meshd_using_subcommand run" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_using_subcommand run" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_using_subcommand init" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_using_subcommand init" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_using_subcommand join" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_using_subcommand join" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_using_subcommand dev" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_using_subcommand dev" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_using_subcommand check-config" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_using_subcommand upgrade" -l timeout -d 'How long to wait for the new process' -r
complete -c meshd -n "__fish_meshd_using_subcommand upgrade" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_using_subcommand upgrade" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_using_subcommand bridge; and not __fish_seen_subcommand_from purge help" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_using_subcommand bridge; and not __fish_seen_subcommand_from purge help" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_using_subcommand bridge; and not __fish_seen_subcommand_from purge help" -f -a "purge" -d 'Delete every Service and EndpointSlice a bridge of CLUSTER wrote in the export namespace (objects carrying its `meshd.io/bridge` label; nothing else), with the config\'s `[bridge]` credentials. Run after the bridges are gone'
complete -c meshd -n "__fish_meshd_using_subcommand bridge; and not __fish_seen_subcommand_from purge help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshd -n "__fish_meshd_using_subcommand bridge; and __fish_seen_subcommand_from purge" -l cluster -r
complete -c meshd -n "__fish_meshd_using_subcommand bridge; and __fish_seen_subcommand_from purge" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_using_subcommand bridge; and __fish_seen_subcommand_from purge" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_using_subcommand bridge; and __fish_seen_subcommand_from help" -f -a "purge" -d 'Delete every Service and EndpointSlice a bridge of CLUSTER wrote in the export namespace (objects carrying its `meshd.io/bridge` label; nothing else), with the config\'s `[bridge]` credentials. Run after the bridges are gone'
complete -c meshd -n "__fish_meshd_using_subcommand bridge; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshd -n "__fish_meshd_using_subcommand completions" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_using_subcommand completions" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_using_subcommand man" -l config -d 'The config file' -r -F
complete -c meshd -n "__fish_meshd_using_subcommand man" -s h -l help -d 'Print help'
complete -c meshd -n "__fish_meshd_using_subcommand help; and not __fish_seen_subcommand_from run init join dev check-config upgrade bridge completions man help" -f -a "run" -d 'Run the daemon (the default)'
complete -c meshd -n "__fish_meshd_using_subcommand help; and not __fish_seen_subcommand_from run init join dev check-config upgrade bridge completions man help" -f -a "init" -d 'Prepare data_dir and a new mesh CA on the first host of a mesh'
complete -c meshd -n "__fish_meshd_using_subcommand help; and not __fish_seen_subcommand_from run init join dev check-config upgrade bridge completions man help" -f -a "join" -d 'Join a mesh with a token from `meshctl token create` (run on any other host)'
complete -c meshd -n "__fish_meshd_using_subcommand help; and not __fish_seen_subcommand_from run init join dev check-config upgrade bridge completions man help" -f -a "dev" -d 'A local mesh on loopback to try things with; stops on Ctrl-C'
complete -c meshd -n "__fish_meshd_using_subcommand help; and not __fish_seen_subcommand_from run init join dev check-config upgrade bridge completions man help" -f -a "check-config" -d 'Validate the config file: exit 0 when meshd would start with it, 2 (naming the line and key) when not. Changes nothing'
complete -c meshd -n "__fish_meshd_using_subcommand help; and not __fish_seen_subcommand_from run init join dev check-config upgrade bridge completions man help" -f -a "upgrade" -d 'Upgrade the running meshd without dropping a connection: it starts the binary now at its path (a package upgrade replaced it), hands it every socket, and drains. Waits until the new process serves the admin socket; exit 0 then, 1 if not'
complete -c meshd -n "__fish_meshd_using_subcommand help; and not __fish_seen_subcommand_from run init join dev check-config upgrade bridge completions man help" -f -a "bridge" -d 'The Kubernetes bridge\'s housekeeping'
complete -c meshd -n "__fish_meshd_using_subcommand help; and not __fish_seen_subcommand_from run init join dev check-config upgrade bridge completions man help" -f -a "completions" -d 'Print shell completions'
complete -c meshd -n "__fish_meshd_using_subcommand help; and not __fish_seen_subcommand_from run init join dev check-config upgrade bridge completions man help" -f -a "man" -d 'Print the man page (roff), as the package installs it'
complete -c meshd -n "__fish_meshd_using_subcommand help; and not __fish_seen_subcommand_from run init join dev check-config upgrade bridge completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshd -n "__fish_meshd_using_subcommand help; and __fish_seen_subcommand_from bridge" -f -a "purge" -d 'Delete every Service and EndpointSlice a bridge of CLUSTER wrote in the export namespace (objects carrying its `meshd.io/bridge` label; nothing else), with the config\'s `[bridge]` credentials. Run after the bridges are gone'
