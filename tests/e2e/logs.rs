//! The binary's log output: colour codes only on a terminal, never in a file or a pipe.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{emulator_command, lines_of};

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let mut child = emulator_command()
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning `hubroute emulator`");
    let lines = lines_of(child.stderr.take().expect("piped stderr"));
    let ready = loop {
        let line = lines.recv_timeout(Duration::from_secs(60));
        match line {
            Ok(line) if line.contains("emulator ready") => break Ok(line),
            Ok(_) => {}
            Err(error) => break Err(error),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let ready = ready.expect("`hubroute emulator` logs `emulator ready` within 60 s");
    assert!(
        !ready.contains('\u{1b}'),
        "a log line written to a pipe has colour codes: {ready:?}"
    );
    assert!(ready.contains(" INFO "), "{ready:?}");
}
