//! Reading passwords: from the terminal without echo (with confirmation for new ones), or
//! one per line from standard input with `--password-stdin`.

use anyhow::{Context, Result, bail};
use std::io::BufRead;
use zeroize::Zeroizing;

pub struct Secrets {
    stdin: bool,
    lines: Option<std::io::Lines<std::io::StdinLock<'static>>>,
}

impl Secrets {
    pub fn new(stdin: bool) -> Self {
        Secrets { stdin, lines: None }
    }

    fn next_line(&mut self, what: &str) -> Result<Zeroizing<String>> {
        let lines = self
            .lines
            .get_or_insert_with(|| std::io::stdin().lock().lines());
        match lines.next() {
            Some(line) => {
                let line = Zeroizing::new(line.with_context(|| {
                    format!("reading {what} from standard input (must be UTF-8)")
                })?);
                Ok(Zeroizing::new(line.trim_end_matches('\r').to_string()))
            }
            None => bail!("standard input ended before the {what} line"),
        }
    }

    /// An existing secret (one prompt).
    pub fn existing(&mut self, what: &str) -> Result<Zeroizing<String>> {
        if self.stdin {
            return self.next_line(what);
        }
        let p = rpassword::prompt_password(format!("{what}: ")).with_context(|| {
            format!(
                "reading the {what} from the terminal (use --password-stdin without a terminal)"
            )
        })?;
        Ok(Zeroizing::new(p))
    }

    /// A new secret: prompted twice on a terminal; one line on standard input.
    pub fn new_password(&mut self, what: &str) -> Result<Zeroizing<String>> {
        if self.stdin {
            return self.next_line(what);
        }
        let first = self.existing(what)?;
        let second = Zeroizing::new(
            rpassword::prompt_password(format!("{what} (again): "))
                .with_context(|| format!("reading the {what} from the terminal"))?,
        );
        if *first != *second {
            bail!("the two entries of the {what} differ; nothing was changed");
        }
        Ok(first)
    }
}
