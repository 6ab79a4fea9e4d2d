use clap::Parser;

mod cli;

fn main() {
    let _cli = cli::Cli::parse();
}
