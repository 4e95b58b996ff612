//! The terminal faces of the view: `hubroute top` and the quick start's live block.
//!
//! We use ratatui on its crossterm backend: ratatui is the maintained successor of tui-rs, used by
//! the tools operators already run (bottom, gitui, `vector top`'s generation of TUIs), renders
//! into a plain buffer that its `TestBackend` lets us test at any size, and supports both a full
//! screen and an inline viewport, which the quick start needs to redraw one block in place
//! without taking over the terminal. crossterm is its default backend and needs no C library.
//!
//! On a terminal, `top` takes the alternate screen and redraws every interval; on a pipe it prints
//! one plain line per interval instead, so it can feed a log or a test.

mod poll;
mod render;

use std::io::{IsTerminal as _, Stdout, Write as _};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::prelude::CrosstermBackend;
use ratatui::{Terminal, TerminalOptions, Viewport};

pub use poll::Poller;
pub use render::{Connection, Screen, Section, SortOrder, health_style};

use crate::{Error, Result};

fn terminal_error(error: &std::io::Error) -> Error {
    Error::Terminal {
        problem: error.to_string(),
    }
}

/// Runs `hubroute top` against `url` until the user quits (`q`, Esc, Ctrl-C) or, on a pipe,
/// until the process is stopped.
pub async fn top(url: &str, interval: Duration) -> Result<()> {
    let mut poller = Poller::new(url)?;
    if !std::io::stdout().is_terminal() {
        return plain(&mut poller, interval).await;
    }
    let mut screen = Screen::new(poller.base().to_owned());
    let mut terminal = ratatui::try_init().map_err(|e| terminal_error(&e))?;
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel(16);
    // crossterm's reads block: they run on their own thread, which ends when the loop below does.
    std::thread::spawn(move || {
        while !keys_tx.is_closed() {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(event) => {
                        if keys_tx.blocking_send(event).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                },
                Ok(false) => {}
                Err(_) => break,
            }
        }
    });
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => {
                poller.poll().await;
                screen.status = poller.status().cloned();
                screen.connection = poller.connection().clone();
            }
            event = keys.recv() => {
                match event {
                    Some(Event::Key(key)) if key.kind == KeyEventKind::Press => {
                        if !apply_key(&mut screen, key.code, key.modifiers) {
                            break Ok(());
                        }
                    }
                    Some(_) => {}
                    None => break Ok(()),
                }
            }
        }
        if let Err(error) = terminal.draw(|frame| frame.render_widget(&screen, frame.area())) {
            break Err(terminal_error(&error));
        }
    };
    ratatui::restore();
    outcome
}

/// Applies a key to the screen; `false` means quit.
fn apply_key(screen: &mut Screen, code: KeyCode, modifiers: KeyModifiers) -> bool {
    match code {
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => return false,
        KeyCode::Char('q') | KeyCode::Esc => return false,
        KeyCode::Char('a') => screen.section = Section::All,
        KeyCode::Char('r') => screen.section = Section::Routes,
        KeyCode::Char('e') => screen.section = Section::Endpoints,
        KeyCode::Char('p') => screen.section = Section::Partitions,
        KeyCode::Char('o') => screen.section = Section::Other,
        KeyCode::Char('s') => {
            screen.sort = match screen.sort {
                SortOrder::Activity => SortOrder::Name,
                SortOrder::Name => SortOrder::Activity,
            };
        }
        _ => {}
    }
    true
}

/// One line per interval: the status's summary, or why the service cannot be read.
async fn plain(poller: &mut Poller, interval: Duration) -> Result<()> {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        poller.poll().await;
        let line = plain_line(poller, &[]);
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`top | head`) ends `top` quietly.
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(());
        }
    }
}

fn plain_line(poller: &Poller, facts: &[(String, String)]) -> String {
    match (poller.connection(), poller.status()) {
        (Connection::Disconnected { problem, .. }, _) => {
            format!("disconnected, retrying: {problem}")
        }
        (_, Some(status)) => {
            let mut line: String = facts.iter().map(|(k, v)| format!("{k} {v} | ")).collect();
            line.push_str(&status.summary_line());
            line
        }
        (_, None) => "connecting…".to_owned(),
    }
}

/// Where the live view goes.
enum Output {
    /// A block redrawn in place on a terminal; made at the first status, whose size sets the
    /// block's height.
    Inline(Option<Terminal<CrosstermBackend<Stdout>>>),
    /// Plain lines on stderr, at most one per `every`.
    Lines {
        every: Duration,
        last: Option<Instant>,
    },
}

/// The quick start's live view of its own engine: on a terminal, the same screen as `top` in a
/// block redrawn in place; on a pipe, a plain line every five seconds.
pub struct LiveView {
    poller: Poller,
    screen: Screen,
    output: Output,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView")
            .field("poller", &self.poller)
            .field("inline", &matches!(self.output, Output::Inline(_)))
            .finish_non_exhaustive()
    }
}

/// Lines of the inline block at most (the quick start's tables need about 20).
const INLINE_HEIGHT: u16 = 30;

impl LiveView {
    /// A live view of the engine serving `url`, titled `source`.
    pub fn new(url: &str, source: &str) -> Result<Self> {
        let poller = Poller::new(url)?;
        let mut screen = Screen::new(source);
        screen.keys = false;
        let interactive = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let output = if interactive {
            Output::Inline(None)
        } else {
            Output::Lines {
                every: Duration::from_secs(5),
                last: None,
            }
        };
        Ok(Self {
            poller,
            screen,
            output,
        })
    }

    /// Scrapes the engine, then asks `facts` for the caller's own counters (read after the
    /// scrape, so that a counter of what was sent is never behind what the engine routed), and
    /// shows both.
    pub async fn refresh(&mut self, facts: impl FnOnce() -> Vec<(String, String)>) -> Result<()> {
        self.scrape(facts).await;
        match &mut self.output {
            Output::Inline(terminal) => {
                if terminal.is_none() && self.screen.status.is_some() {
                    *terminal = Some(inline_terminal(&self.screen)?);
                }
                if let Some(terminal) = terminal {
                    draw(terminal, &self.screen)?;
                }
            }
            Output::Lines { every, last } => {
                if last.is_none_or(|t| t.elapsed() >= *every) {
                    eprintln!("{}", plain_line(&self.poller, &self.screen.facts));
                    *last = Some(Instant::now());
                }
            }
        }
        Ok(())
    }

    /// Scrapes once more and leaves the last block, with the final counts, on screen with the
    /// cursor below it; or prints a last plain line.
    pub async fn finish(mut self, facts: impl FnOnce() -> Vec<(String, String)>) -> Result<()> {
        self.scrape(facts).await;
        match self.output {
            Output::Inline(Some(mut terminal)) => {
                draw(&mut terminal, &self.screen)?;
                let bottom = terminal.get_frame().area().bottom();
                terminal
                    .set_cursor_position((0, bottom.saturating_sub(1)))
                    .and_then(|()| terminal.show_cursor())
                    .map_err(|e| terminal_error(&e))?;
                println!();
            }
            Output::Inline(None) => {}
            Output::Lines { .. } => {
                eprintln!("{}", plain_line(&self.poller, &self.screen.facts));
            }
        }
        Ok(())
    }

    async fn scrape(&mut self, facts: impl FnOnce() -> Vec<(String, String)>) {
        self.poller.poll().await;
        self.screen.facts = facts();
        self.screen.status = self.poller.status().cloned();
        self.screen.connection = self.poller.connection().clone();
    }
}

/// An inline viewport below the cursor, as high as `screen` needs (at most [`INLINE_HEIGHT`] and
/// one line less than the terminal).
fn inline_terminal(screen: &Screen) -> Result<Terminal<CrosstermBackend<Stdout>>> {
    let rows = ratatui::crossterm::terminal::size().map_or(INLINE_HEIGHT, |(_, r)| r);
    let height = screen
        .natural_height()
        .min(INLINE_HEIGHT)
        .min(rows.saturating_sub(1));
    Terminal::with_options(
        CrosstermBackend::new(std::io::stdout()),
        TerminalOptions {
            viewport: Viewport::Inline(height),
        },
    )
    .map_err(|e| terminal_error(&e))
}

fn draw(terminal: &mut Terminal<CrosstermBackend<Stdout>>, screen: &Screen) -> Result<()> {
    terminal
        .draw(|frame| frame.render_widget(screen, frame.area()))
        .map(|_| ())
        .map_err(|e| terminal_error(&e))
}

#[cfg(test)]
mod tests;
