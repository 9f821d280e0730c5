// A closed-loop HTTP/1.1 load client that sends an exact number of requests, for counting the
// work a proxy does per request (bench/count.sh runs the proxy under callgrind or strace, where
// wrk's fixed duration would give a different number of requests every time).
// Usage: floor-load HOST:PORT PATH REQUESTS CONNECTIONS [HEADER: VALUE]...
// Each connection is one thread that sends its share of REQUESTS one after another on one
// keep-alive connection (the first connections take one more when REQUESTS does not divide), and
// checks each answer is a 200 with a content-length body. Prints "requests connections seconds".
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: floor-load HOST:PORT PATH REQUESTS CONNECTIONS [HEADER: VALUE]...");
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
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let n = requests / connections + usize::from(i < requests % connections);
            let (addr, head) = (addr.clone(), head.clone());
            std::thread::spawn(move || run(&addr, head.as_bytes(), n))
        })
        .collect();
    for t in threads {
        if let Err(e) = t.join().expect("a connection's thread panicked") {
            eprintln!("floor-load: {e}");
            std::process::exit(1);
        }
    }
    println!("{requests} {connections} {:.3}", started.elapsed().as_secs_f64());
}

fn run(addr: &str, head: &[u8], n: usize) -> Result<(), String> {
    if n == 0 {
        return Ok(());
    }
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let mut line = String::new();
    let mut body = Vec::new();
    for i in 0..n {
        writer.write_all(head).map_err(|e| format!("request {i}: {e}"))?;
        line.clear();
        reader.read_line(&mut line).map_err(|e| format!("response {i}: {e}"))?;
        if !line.starts_with("HTTP/1.1 200 ") {
            return Err(format!("response {i}: {}", line.trim_end()));
        }
        let mut length = None;
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| format!("response {i}: {e}"))?;
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
        reader.read_exact(&mut body).map_err(|e| format!("response {i}: body: {e}"))?;
    }
    Ok(())
}
