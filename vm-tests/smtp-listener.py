#!/usr/bin/env python3
"""The remote SMTP peer of the VM test: a tiny SMTP server on 127.0.0.1:25 of the
harness's private network namespace, which the guest reaches as 10.0.2.2 through
qemu's user-mode network.

    smtp-listener.py OUTDIR [PORT]

Greets "220 remote.test ESMTP", answers HELO/EHLO/MAIL/RCPT/RSET/NOOP/QUIT, accepts any
number of messages and writes each one to OUTDIR/msg-N.eml; OUTDIR/log holds one line
per connection and command. Writes OUTDIR/ready once it listens.
"""
import os
import socket
import sys
import threading

outdir = sys.argv[1]
port = int(sys.argv[2]) if len(sys.argv) > 2 else 25
lock = threading.Lock()
count = 0


def log(line):
    with lock, open(os.path.join(outdir, "log"), "a") as f:
        f.write(line + "\n")


def serve(conn, peer):
    global count
    f = conn.makefile("rb")
    send = lambda s: conn.sendall(s.encode() + b"\r\n")
    log(f"connect {peer[0]}:{peer[1]}")
    try:
        send("220 remote.test ESMTP")
        while True:
            line = f.readline()
            if not line:
                break
            cmd = line.decode(errors="replace").strip()
            log(f"< {cmd}")
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                send("250-remote.test")
                send("250 8BITMIME")
            elif verb in ("HELO", "MAIL", "RCPT", "RSET", "NOOP"):
                send("250 OK")
            elif verb == "DATA":
                send("354 end with .")
                body = []
                while True:
                    d = f.readline()
                    if not d or d in (b".\r\n", b".\n"):
                        break
                    body.append(d)
                with lock:
                    count += 1
                    n = count
                with open(os.path.join(outdir, f"msg-{n}.eml"), "wb") as m:
                    m.writelines(body)
                send(f"250 OK queued as vmtest-{n}")
            elif verb == "QUIT":
                send("221 bye")
                break
            else:
                send("502 not implemented")
    except OSError:
        pass
    finally:
        conn.close()


s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
open(os.path.join(outdir, "ready"), "w").close()
while True:
    c, p = s.accept()
    threading.Thread(target=serve, args=(c, p), daemon=True).start()
