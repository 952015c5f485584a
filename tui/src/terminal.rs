//! The real terminal: raw mode, alternate screen and mouse capture on the way in, all undone on
//! the way out, on error, and on panic (a panic hook restores the terminal before the message is
//! printed, so the shell is usable and the message readable).

use std::io::{self, Stdout};
use std::time::Duration;

use crossterm::event::{self, DisableMouseCapture, EnableMouseCapture, Event as TermEvent};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use crate::app::App;
use crate::keys;
use crate::views;

/// How long the loop waits for input before looking at the loader again.
const POLL: Duration = Duration::from_millis(50);
/// The most time per frame spent taking loader messages.
const DRAIN_BUDGET: Duration = Duration::from_millis(30);

/// Restores the terminal (idempotent; errors ignored: nothing better to do on the way out).
pub fn restore() {
    let _ = disable_raw_mode();
    let _ =
        execute!(io::stdout(), DisableMouseCapture, LeaveAlternateScreen, crossterm::cursor::Show);
}

/// Restores the terminal when dropped (early return, error).
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

/// Runs the browser until the user quits.
pub fn run(mut app: App) -> io::Result<()> {
    install_panic_hook();
    enable_raw_mode()?;
    let _guard = Guard;
    execute!(io::stdout(), EnterAlternateScreen, EnableMouseCapture)?;
    let mut terminal: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    let mut dirty = true;
    loop {
        dirty |= app.drain(DRAIN_BUDGET);
        dirty |= app.tick();
        if app.loading() {
            // The spinner and the counters move.
            dirty = true;
        }
        if dirty {
            terminal.draw(|frame| views::draw(frame, &mut app))?;
            dirty = false;
        }
        if app.quit {
            break;
        }
        if event::poll(POLL)? {
            // Take every pending input before drawing again (fast key repeat, wheel bursts).
            loop {
                let ev = event::read()?;
                if matches!(ev, TermEvent::Resize(..)) {
                    terminal.autoresize()?;
                }
                if let Some(action) = keys::action(&ev, app.prompt.is_some()) {
                    app.act(action);
                }
                dirty = true;
                if app.quit || !event::poll(Duration::ZERO)? {
                    break;
                }
            }
        }
        if app.quit {
            break;
        }
    }
    Ok(())
}
