// A closed-loop HTTP/1.1 load client that sends an exact number of requests, for counting the
// work a proxy does per request (bench/count.sh runs the proxy under callgrind or strace, where
// wrk's fixed duration would give a different number of requests every time).
// Usage: floor-load [--warmup W] HOST:PORT PATH REQUESTS CONNECTIONS [HEADER: VALUE]...
// Each connection is one thread that sends its share of REQUESTS one after another on one
// keep-alive connection (the first connections take one more when REQUESTS does not divide), and
// checks each answer is a 200 with a content-length body. Prints "requests connections seconds".
// With --warmup, each connection first sends its share of W requests; once every connection has,
// it prints "warm" and waits for a line on stdin before the REQUESTS, over the same connections;
// after them it prints its line and waits for another before it closes the connections: what is
// counted between the two is the steady state, without connecting and closing (as under wrk).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::Instant;

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    // With --warmup (even of 0), the phases below, told apart on stdout and started from stdin.
    let mut warmup = None;
    if args.get(1).map(String::as_str) == Some("--warmup") {
        let w: usize = args
            .get(2)
            .and_then(|w| w.parse().ok())
            .expect("--warmup: a count");
        warmup = Some(w);
        args.drain(1..3);
    }
    if args.len() < 5 {
        eprintln!(
            "usage: floor-load [--warmup W] HOST:PORT PATH REQUESTS CONNECTIONS [HEADER: VALUE]..."
        );
        std::process::exit(64);
    }
    let addr = args[1].clone();
    let requests: usize = args[3].parse().expect("REQUESTS: a count");
    let connections: usize = args[4].parse().expect("CONNECTIONS: a count");
    let mut head = format!("GET {} HTTP/1.1\r\nhost: {}\r\n", args[2], addr);
    for h in &args[5..] {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let share = |total: usize, i: usize| total / connections + usize::from(i < total % connections);
    // With a warm-up, the connections and this thread pass these together: all warm; the go from
    // stdin; all done; the close from stdin.
    let [warm, go, done, close]: [Arc<Barrier>; 4] =
        std::array::from_fn(|_| Arc::new(Barrier::new(connections + 1)));
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let (n, w) = (share(requests, i), share(warmup.unwrap_or(0), i));
            let (addr, head) = (addr.clone(), head.clone());
            let [warm, go, done, close] = [&warm, &go, &done, &close].map(|b| b.clone());
            std::thread::spawn(move || {
                if warmup.is_none() {
                    return match n {
                        0 => Ok(()),
                        n => Conn::open(&addr)?.send(head.as_bytes(), n),
                    };
                }
                let mut conn = Conn::open(&addr);
                // Every thread passes every barrier, even after an error, so that none waits
                // for ever; the first error is the one reported.
                let mut send = |n| {
                    conn.as_mut()
                        .map_err(|e| e.clone())
                        .and_then(|c| c.send(head.as_bytes(), n))
                };
                let warmed = send(w);
                warm.wait();
                go.wait();
                let measured = warmed.and_then(|()| send(n));
                done.wait();
                close.wait();
                measured
            })
        })
        .collect();
    let line_from_stdin = || {
        std::io::stdout().flush().expect("stdout");
        std::io::stdin()
            .read_line(&mut String::new())
            .expect("stdin");
    };
    let report = |started: Instant| {
        println!(
            "{requests} {connections} {:.3}",
            started.elapsed().as_secs_f64()
        );
    };
    let mut started = Instant::now();
    if warmup.is_some() {
        warm.wait();
        println!("warm");
        line_from_stdin();
        go.wait();
        started = Instant::now();
        done.wait();
        report(started);
        line_from_stdin();
        close.wait();
    }
    for t in threads {
        if let Err(e) = t.join().expect("a connection's thread panicked") {
            eprintln!("floor-load: {e}");
            std::process::exit(1);
        }
    }
    if warmup.is_none() {
        report(started);
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        Ok(Conn {
            reader,
            writer: stream,
        })
    }

    /// Sends `n` requests, one after another, each after the answer to the one before.
    fn send(&mut self, head: &[u8], n: usize) -> Result<(), String> {
        let (reader, writer) = (&mut self.reader, &mut self.writer);
        let mut line = String::new();
        let mut body = Vec::new();
        for i in 0..n {
            writer
                .write_all(head)
                .map_err(|e| format!("request {i}: {e}"))?;
            line.clear();
            reader
                .read_line(&mut line)
                .map_err(|e| format!("response {i}: {e}"))?;
            if !line.starts_with("HTTP/1.1 200 ") {
                return Err(format!("response {i}: {}", line.trim_end()));
            }
            let mut length = None;
            loop {
                line.clear();
                reader
                    .read_line(&mut line)
                    .map_err(|e| format!("response {i}: {e}"))?;
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((name, value)) = l.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse::<usize>().ok();
                }
            }
            let length = length.ok_or_else(|| format!("response {i}: no content-length"))?;
            body.resize(length, 0);
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("response {i}: body: {e}"))?;
        }
        Ok(())
    }
}
