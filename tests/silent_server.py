"""A local server that accepts connections and never answers: a hub download that stalls."""

import contextlib
import socket
import threading


@contextlib.contextmanager
def silent_server():
  """Yields `http://127.0.0.1:<port>`; connections are accepted and left unanswered until exit."""
  server = socket.create_server(('127.0.0.1', 0))
  accepted = []

  def accept():
    while True:
      try:
        accepted.append(server.accept()[0])
      except OSError:  # closed
        return

  threading.Thread(target=accept, daemon=True).start()
  try:
    yield f'http://127.0.0.1:{server.getsockname()[1]}'
  finally:
    server.close()
    for connection in accepted:
      connection.close()
