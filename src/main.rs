//! The `kiln` command.

fn main() {
    kiln::exec::short_lived_process();
    // The executor re-executes kiln as its helper; that path must not start any threads first.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == kiln::exec::helper::HELPER_ARG)
    {
        kiln::exec::helper::main();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == kiln::store::unsynced::SYNC_ARG)
    {
        let root = std::env::args_os().nth(2).unwrap_or_default();
        let ok = kiln::store::unsynced::confirm(std::path::Path::new(&root)).is_ok();
        kiln::exec::end_process(if ok { 0 } else { 1 });
    }
    let code = kiln::cli::main();
    kiln::progress::flush();
    kiln::exec::end_process(code)
}
