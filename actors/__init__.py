"""pykka actors: pair, wallet, persistence writer, outbox relay and their supervisor."""
