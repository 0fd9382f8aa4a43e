//! tomoe-convert: the command-line front end of `tomoe::convert` (work in progress on this branch).
fn main() {
    eprintln!("tomoe-convert: the command line is not wired up yet on this commit");
    std::process::exit(2);
}
