//! Keys and mouse gestures to [`Action`]s: what users of less, vim and htop expect.

use crossterm::event::{
    Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent,
    MouseEventKind,
};
use ratatui::layout::Position;

use crate::app::{Action, PromptKind, ViewId};

/// The action of a terminal event, if any. `typing` is true while a prompt is open: printable
/// keys are text then.
pub fn action(event: &TermEvent, typing: bool) -> Option<Action> {
    match event {
        TermEvent::Key(key) if key.kind != KeyEventKind::Release => key_action(key, typing),
        TermEvent::Mouse(m) => mouse_action(m),
        _ => None,
    }
}

fn key_action(key: &KeyEvent, typing: bool) -> Option<Action> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    if typing {
        return match key.code {
            KeyCode::Char(c) => Some(Action::Type(c)),
            KeyCode::Backspace => Some(Action::Erase),
            KeyCode::Enter => Some(Action::Enter),
            KeyCode::Esc => Some(Action::Back),
            _ => None,
        };
    }
    Some(match key.code {
        KeyCode::Char('f') if ctrl => Action::PageDown,
        KeyCode::Char('b') if ctrl => Action::PageUp,
        KeyCode::Char('d') if ctrl => Action::PageDown,
        KeyCode::Char('u') if ctrl => Action::PageUp,
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('j') | KeyCode::Down => Action::Down,
        KeyCode::Char('k') | KeyCode::Up => Action::Up,
        KeyCode::PageDown | KeyCode::Char(' ') => Action::PageDown,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::Char('g') | KeyCode::Home => Action::First,
        KeyCode::Char('G') | KeyCode::End => Action::Last,
        KeyCode::Enter => Action::Enter,
        KeyCode::Esc => Action::Back,
        KeyCode::Tab => Action::NextView,
        KeyCode::BackTab => Action::PrevView,
        KeyCode::Char('?') => Action::Help,
        KeyCode::Char('/') => Action::Prompt(PromptKind::Search),
        KeyCode::Char('f') => Action::Prompt(PromptKind::Filter),
        KeyCode::Char('t') => Action::Prompt(PromptKind::Time),
        KeyCode::Char('n') => Action::SearchNext(true),
        KeyCode::Char('N') => Action::SearchNext(false),
        KeyCode::Char('a') => Action::Anomaly(true),
        KeyCode::Char('A') => Action::Anomaly(false),
        KeyCode::Char('c') => Action::Crash,
        KeyCode::Char('>') => Action::Lanes(true),
        KeyCode::Char('<') => Action::Lanes(false),
        // The views in Tab order; a key beyond the registered views does nothing.
        KeyCode::Char(d @ '1'..='9') => Action::Show(ViewId(usize::from(d as u8 - b'1'))),
        _ => return None,
    })
}

fn mouse_action(m: &MouseEvent) -> Option<Action> {
    let at = Position::new(m.column, m.row);
    match m.kind {
        MouseEventKind::ScrollDown => Some(Action::Scroll { down: true, at }),
        MouseEventKind::ScrollUp => Some(Action::Scroll { down: false, at }),
        MouseEventKind::Down(MouseButton::Left) => Some(Action::Click(at)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crossterm::event::KeyEvent;

    use super::*;

    fn key(code: KeyCode) -> TermEvent {
        TermEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn less_vim_htop_keys() {
        for (code, expected) in [
            (KeyCode::Char('j'), Action::Down),
            (KeyCode::Down, Action::Down),
            (KeyCode::Char('k'), Action::Up),
            (KeyCode::PageDown, Action::PageDown),
            (KeyCode::Char('g'), Action::First),
            (KeyCode::Char('G'), Action::Last),
            (KeyCode::Char('n'), Action::SearchNext(true)),
            (KeyCode::Char('N'), Action::SearchNext(false)),
            (KeyCode::Char('a'), Action::Anomaly(true)),
            (KeyCode::Char('A'), Action::Anomaly(false)),
            (KeyCode::Char('c'), Action::Crash),
            (KeyCode::Char('/'), Action::Prompt(PromptKind::Search)),
            (KeyCode::Char('f'), Action::Prompt(PromptKind::Filter)),
            (KeyCode::Char('t'), Action::Prompt(PromptKind::Time)),
            (KeyCode::Char('3'), Action::Show(ViewId::STATE)),
            (KeyCode::Tab, Action::NextView),
            (KeyCode::Char('?'), Action::Help),
            (KeyCode::Char('q'), Action::Quit),
        ] {
            assert_eq!(action(&key(code), false), Some(expected), "{code:?}");
        }
        // In a prompt, letters are text.
        assert_eq!(action(&key(KeyCode::Char('q')), true), Some(Action::Type('q')));
        let ctrl_c = TermEvent::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert_eq!(action(&ctrl_c, true), Some(Action::Quit));
    }
}
