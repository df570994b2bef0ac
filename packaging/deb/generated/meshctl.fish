# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_meshctl_global_optspecs
    string join \n socket= o/output= timeout= h/help V/version
end

function __fish_meshctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_meshctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_meshctl_using_subcommand
    set -l cmd (__fish_meshctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c meshctl -n "__fish_meshctl_needs_command" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_needs_command" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_needs_command" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_needs_command" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_needs_command" -s V -l version -d 'Print version'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "status" -d 'This node: identity, store, members and more'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "members" -d 'Members of the mesh and their state'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "connections" -d 'Live QUIC connections with other members, by verified identity'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "services" -d 'Services in the mesh and their instances'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "service" -d 'This node\'s services'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "token" -d 'Join tokens'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "route" -d 'Routes: how a service\'s traffic is split, matched and retried'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "policy" -d 'Authorization policies: who may call a service, on which requests, how often'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "node" -d 'Nodes of the mesh'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "ca" -d 'The mesh\'s certificate authority'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "top" -d 'Live calls between services across the mesh (requests/s, success rate, latency), over the last half minute, refreshed every 2 s; Ctrl-C stops'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "completions" -d 'Print shell completions'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "man" -d 'Print the man page (roff), as the package installs it'
complete -c meshctl -n "__fish_meshctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand status" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand status" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand status" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand status" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand members" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand members" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand members" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand members" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand connections" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand connections" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand connections" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand connections" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand services" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand services" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand services" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand services" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and not __fish_seen_subcommand_from register deregister allow help" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and not __fish_seen_subcommand_from register deregister allow help" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and not __fish_seen_subcommand_from register deregister allow help" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and not __fish_seen_subcommand_from register deregister allow help" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and not __fish_seen_subcommand_from register deregister allow help" -f -a "register" -d 'Register (or replace) a service on this node from a TOML file: the keys of one `[[service]]` entry at its top level. It survives restarts'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and not __fish_seen_subcommand_from register deregister allow help" -f -a "deregister" -d 'Remove a registered service of this node'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and not __fish_seen_subcommand_from register deregister allow help" -f -a "allow" -d 'Claim a service name for some nodes: from then on only nodes matching the globs may register it, mesh-wide (others\' instances leave routing). Without a name: list the claims. Needs role operator'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and not __fish_seen_subcommand_from register deregister allow help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from register" -s f -l file -d 'The service file (TOML): name, port, and optionally address, protocol, labels, check' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from register" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from register" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from register" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from register" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from deregister" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from deregister" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from deregister" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from deregister" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from allow" -l nodes -d 'Node name globs, comma-separated (`web-*,db-1`)' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from allow" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from allow" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from allow" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from allow" -l release -d 'Release the claim: the name is open to every member again'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from allow" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "register" -d 'Register (or replace) a service on this node from a TOML file: the keys of one `[[service]]` entry at its top level. It survives restarts'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "deregister" -d 'Remove a registered service of this node'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "allow" -d 'Claim a service name for some nodes: from then on only nodes matching the globs may register it, mesh-wide (others\' instances leave routing). Without a name: list the claims. Needs role operator'
complete -c meshctl -n "__fish_meshctl_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and not __fish_seen_subcommand_from create help" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and not __fish_seen_subcommand_from create help" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and not __fish_seen_subcommand_from create help" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and not __fish_seen_subcommand_from create help" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and not __fish_seen_subcommand_from create help" -f -a "create" -d 'Make a token for one host to join, redeemable once at this node; prints it'
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and not __fish_seen_subcommand_from create help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and __fish_seen_subcommand_from create" -l ttl -d 'How long it is valid, 1s to 7d' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and __fish_seen_subcommand_from create" -l role -d 'The joining node\'s role: member (serves and reads), operator (also writes routes and policies) or signer (also issues certificates and tokens, removes nodes; it receives the CA key)' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and __fish_seen_subcommand_from create" -l node -d 'Only a node with this name may use it' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and __fish_seen_subcommand_from create" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and __fish_seen_subcommand_from create" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and __fish_seen_subcommand_from create" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and __fish_seen_subcommand_from create" -l signer -d 'The same as --role signer'
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "create" -d 'Make a token for one host to join, redeemable once at this node; prints it'
complete -c meshctl -n "__fish_meshctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -f -a "apply" -d 'Validate a file and store it as a new revision; prints what changed, and warnings about what cannot work'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -f -a "list" -d 'Every one'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -f -a "get" -d 'One, as TOML (or the API\'s JSON with -o json)'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -f -a "delete" -d 'Delete it (its history stays)'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -f -a "history" -d 'Its revisions, oldest first'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -f -a "rollback" -d 'A new revision with an earlier revision\'s content; prints what changed'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -f -a "lint" -d 'Problems that keep routes from working as written: a service with no instance, subsets that select no instance, rules of the other protocol. Exit 1 when any'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and not __fish_seen_subcommand_from apply list get delete history rollback lint help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from apply" -s f -l file -d 'The file (TOML). Routes: `service`, `[subsets]`, `[[http]]` or `[[tcp]]` rules. Policies: `service`, `default`, `[[allow]]`, `[[deny]]`, `[[rate_limit]]`' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from apply" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from apply" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from apply" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from apply" -l dry-run -d 'Validate and print the diff against the current revision; store nothing'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from apply" -l wait -d 'Return once every member holds the new revision (at most --timeout); exit 1 naming the members that lag, or that gossip holds dead (unconfirmed)'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from apply" -l alive-only -d 'With --wait: members that gossip holds dead are not waited for (they are named as unconfirmed, and the command succeeds)'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from apply" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from list" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from list" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from list" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from get" -l revision -d 'An earlier revision from its history: its number, or number@node (`3@node-1`) when two nodes wrote a revision with that number' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from get" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from get" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from get" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from delete" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from delete" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from delete" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from history" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from history" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from history" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from history" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from rollback" -l to -d 'The revision to restore: its number, or number@node (`3@node-1`, as `history` names it). Default: the newest before the current' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from rollback" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from rollback" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from rollback" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from rollback" -l dry-run -d 'Print the diff the rollback would make; store nothing'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from rollback" -l wait -d 'Return once every member holds the new revision (at most --timeout), as `apply --wait` does'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from rollback" -l alive-only -d 'With --wait: do not wait for members that gossip holds dead'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from rollback" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from lint" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from lint" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from lint" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from lint" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "apply" -d 'Validate a file and store it as a new revision; prints what changed, and warnings about what cannot work'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "list" -d 'Every one'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "get" -d 'One, as TOML (or the API\'s JSON with -o json)'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete it (its history stays)'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "history" -d 'Its revisions, oldest first'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "rollback" -d 'A new revision with an earlier revision\'s content; prints what changed'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "lint" -d 'Problems that keep routes from working as written: a service with no instance, subsets that select no instance, rules of the other protocol. Exit 1 when any'
complete -c meshctl -n "__fish_meshctl_using_subcommand route; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -f -a "apply" -d 'Validate a file and store it as a new revision; prints what changed, and warnings about what cannot work'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -f -a "list" -d 'Every one'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -f -a "get" -d 'One, as TOML (or the API\'s JSON with -o json)'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -f -a "delete" -d 'Delete it (its history stays)'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -f -a "history" -d 'Its revisions, oldest first'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -f -a "rollback" -d 'A new revision with an earlier revision\'s content; prints what changed'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -f -a "check" -d 'What the destination\'s policy decides for a caller (and a request): one line, `allow` or `deny`, then the policy and rule that decided (or the default). Exit 0 for allow, 1 for deny'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and not __fish_seen_subcommand_from apply list get delete history rollback check help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from apply" -s f -l file -d 'The file (TOML). Routes: `service`, `[subsets]`, `[[http]]` or `[[tcp]]` rules. Policies: `service`, `default`, `[[allow]]`, `[[deny]]`, `[[rate_limit]]`' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from apply" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from apply" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from apply" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from apply" -l dry-run -d 'Validate and print the diff against the current revision; store nothing'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from apply" -l wait -d 'Return once every member holds the new revision (at most --timeout); exit 1 naming the members that lag, or that gossip holds dead (unconfirmed)'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from apply" -l alive-only -d 'With --wait: members that gossip holds dead are not waited for (they are named as unconfirmed, and the command succeeds)'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from apply" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from list" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from list" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from list" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from get" -l revision -d 'An earlier revision from its history: its number, or number@node (`3@node-1`) when two nodes wrote a revision with that number' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from get" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from get" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from get" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from history" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from history" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from history" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from history" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from rollback" -l to -d 'The revision to restore: its number, or number@node (`3@node-1`, as `history` names it). Default: the newest before the current' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from rollback" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from rollback" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from rollback" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from rollback" -l dry-run -d 'Print the diff the rollback would make; store nothing'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from rollback" -l wait -d 'Return once every member holds the new revision (at most --timeout), as `apply --wait` does'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from rollback" -l alive-only -d 'With --wait: do not wait for members that gossip holds dead'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from rollback" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from check" -l from -d 'The caller: a service (`productpage`, on the first node that hosts it, or `productpage@NODE`) or a node (`node:NAME`)' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from check" -l to -d 'The destination service' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from check" -l method -d 'The request\'s method (an HTTP service\'s rules look at requests)' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from check" -l path -d 'The request\'s path' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from check" -l header -d 'A request header, NAME=VALUE; repeat it for more' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from check" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from check" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from check" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "apply" -d 'Validate a file and store it as a new revision; prints what changed, and warnings about what cannot work'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "list" -d 'Every one'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "get" -d 'One, as TOML (or the API\'s JSON with -o json)'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete it (its history stays)'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "history" -d 'Its revisions, oldest first'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "rollback" -d 'A new revision with an earlier revision\'s content; prints what changed'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "check" -d 'What the destination\'s policy decides for a caller (and a request): one line, `allow` or `deny`, then the policy and rule that decided (or the default). Exit 0 for allow, 1 for deny'
complete -c meshctl -n "__fish_meshctl_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and not __fish_seen_subcommand_from remove help" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and not __fish_seen_subcommand_from remove help" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and not __fish_seen_subcommand_from remove help" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and not __fish_seen_subcommand_from remove help" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and not __fish_seen_subcommand_from remove help" -f -a "remove" -d 'Remove a node: revoke its certificate and key everywhere, close its connections'
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and not __fish_seen_subcommand_from remove help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and __fish_seen_subcommand_from remove" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and __fish_seen_subcommand_from remove" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and __fish_seen_subcommand_from remove" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove a node: revoke its certificate and key everywhere, close its connections'
complete -c meshctl -n "__fish_meshctl_using_subcommand node; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and not __fish_seen_subcommand_from rotate help" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and not __fish_seen_subcommand_from rotate help" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and not __fish_seen_subcommand_from rotate help" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and not __fish_seen_subcommand_from rotate help" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and not __fish_seen_subcommand_from rotate help" -f -a "rotate" -d 'Rotate the CA root (on a signer): a new root is added to every node\'s trust, then, once every alive member holds it (waiting up to --timeout), certificates are issued under it and every node renews; the old root stops being trusted once the last certificate it issued has expired. Live connections are not cut. Run it again to continue a rotation that timed out'
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and not __fish_seen_subcommand_from rotate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and __fish_seen_subcommand_from rotate" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and __fish_seen_subcommand_from rotate" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and __fish_seen_subcommand_from rotate" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and __fish_seen_subcommand_from rotate" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and __fish_seen_subcommand_from help" -f -a "rotate" -d 'Rotate the CA root (on a signer): a new root is added to every node\'s trust, then, once every alive member holds it (waiting up to --timeout), certificates are issued under it and every node renews; the old root stops being trusted once the last certificate it issued has expired. Live connections are not cut. Run it again to continue a rotation that timed out'
complete -c meshctl -n "__fish_meshctl_using_subcommand ca; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand top" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand top" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand top" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand top" -l once -d 'Print once and exit (also what `-o json` does)'
complete -c meshctl -n "__fish_meshctl_using_subcommand top" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand completions" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand completions" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand completions" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand completions" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand man" -l socket -d 'meshd\'s admin socket' -r -F
complete -c meshctl -n "__fish_meshctl_using_subcommand man" -s o -l output -d 'Output: a readable table, or the admin API\'s JSON body unchanged' -r -f -a "table\t''
json\t''"
complete -c meshctl -n "__fish_meshctl_using_subcommand man" -l timeout -d 'How long to wait for meshd\'s answer' -r
complete -c meshctl -n "__fish_meshctl_using_subcommand man" -s h -l help -d 'Print help'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "status" -d 'This node: identity, store, members and more'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "members" -d 'Members of the mesh and their state'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "connections" -d 'Live QUIC connections with other members, by verified identity'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "services" -d 'Services in the mesh and their instances'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "service" -d 'This node\'s services'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "token" -d 'Join tokens'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "route" -d 'Routes: how a service\'s traffic is split, matched and retried'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "policy" -d 'Authorization policies: who may call a service, on which requests, how often'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "node" -d 'Nodes of the mesh'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "ca" -d 'The mesh\'s certificate authority'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "top" -d 'Live calls between services across the mesh (requests/s, success rate, latency), over the last half minute, refreshed every 2 s; Ctrl-C stops'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "completions" -d 'Print shell completions'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "man" -d 'Print the man page (roff), as the package installs it'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and not __fish_seen_subcommand_from status members connections services service token route policy node ca top completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "register" -d 'Register (or replace) a service on this node from a TOML file: the keys of one `[[service]]` entry at its top level. It survives restarts'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "deregister" -d 'Remove a registered service of this node'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "allow" -d 'Claim a service name for some nodes: from then on only nodes matching the globs may register it, mesh-wide (others\' instances leave routing). Without a name: list the claims. Needs role operator'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "create" -d 'Make a token for one host to join, redeemable once at this node; prints it'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "apply" -d 'Validate a file and store it as a new revision; prints what changed, and warnings about what cannot work'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "list" -d 'Every one'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "get" -d 'One, as TOML (or the API\'s JSON with -o json)'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "delete" -d 'Delete it (its history stays)'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "history" -d 'Its revisions, oldest first'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "rollback" -d 'A new revision with an earlier revision\'s content; prints what changed'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from route" -f -a "lint" -d 'Problems that keep routes from working as written: a service with no instance, subsets that select no instance, rules of the other protocol. Exit 1 when any'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "apply" -d 'Validate a file and store it as a new revision; prints what changed, and warnings about what cannot work'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "list" -d 'Every one'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "get" -d 'One, as TOML (or the API\'s JSON with -o json)'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "delete" -d 'Delete it (its history stays)'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "history" -d 'Its revisions, oldest first'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "rollback" -d 'A new revision with an earlier revision\'s content; prints what changed'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "check" -d 'What the destination\'s policy decides for a caller (and a request): one line, `allow` or `deny`, then the policy and rule that decided (or the default). Exit 0 for allow, 1 for deny'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from node" -f -a "remove" -d 'Remove a node: revoke its certificate and key everywhere, close its connections'
complete -c meshctl -n "__fish_meshctl_using_subcommand help; and __fish_seen_subcommand_from ca" -f -a "rotate" -d 'Rotate the CA root (on a signer): a new root is added to every node\'s trust, then, once every alive member holds it (waiting up to --timeout), certificates are issued under it and every node renews; the old root stops being trusted once the last certificate it issued has expired. Live connections are not cut. Run it again to continue a rotation that timed out'
