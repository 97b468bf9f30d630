//! SMTP load for tests that count what was acknowledged: a client that never panics (any
//! error means "not acknowledged" and a reconnect), and the subject that names each
//! message at the destination.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A client that never panics: any error means "not acknowledged" and a reconnect.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        let mut client = Self {
            reader: BufReader::new(stream),
            writer,
        };
        client.expect("220")?;
        client.command("EHLO load.test", "250")?;
        Ok(client)
    }

    fn reply(&mut self) -> std::io::Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(all);
            }
        }
    }

    fn expect(&mut self, code: &str) -> std::io::Result<String> {
        let reply = self.reply()?;
        if reply.starts_with(code) {
            Ok(reply)
        } else {
            Err(std::io::Error::other(reply))
        }
    }

    fn command(&mut self, line: &str, code: &str) -> std::io::Result<String> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.expect(code)
    }

    /// Sends one message; its queue id, only when it was answered 250.
    pub fn send(&mut self, subject: &str) -> std::io::Result<String> {
        self.command("MAIL FROM:<load@example.com>", "250")?;
        self.command("RCPT TO:<sink@dest.test>", "250")?;
        self.command("DATA", "354")?;
        let filler = "The quick brown fox jumps over the lazy dog. ".repeat(40);
        let body = format!(
            "From: <load@example.com>\r\nTo: <sink@dest.test>\r\nSubject: {subject}\r\n\r\n{filler}\r\n{filler}\r\nEND-OF-MESSAGE {subject}\r\n.\r\n"
        );
        self.writer.write_all(body.as_bytes())?;
        let reply = self.expect("250 2.0.0 Ok: queued as")?;
        Ok(reply
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned())
    }
}

pub fn subject_of(data: &str) -> Option<String> {
    data.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .map(|s| s.trim().to_owned())
}
