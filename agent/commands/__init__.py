"""One module per `nodewarden` subcommand: HELP, add_arguments(parser), main(args) -> int."""
