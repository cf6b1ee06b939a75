"""Pure game-server logic: no sockets, no trio, time passed in (sans-I/O, like wsproto/h11)."""
