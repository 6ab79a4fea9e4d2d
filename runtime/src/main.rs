use clap::Parser;
use taskcluster::cli::Cli;

fn main() {
    let _cli = Cli::parse();
}
