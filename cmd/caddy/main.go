// Command caddy is Caddy with its standard modules and chat_gateway, so the
// repository runs with plain Go: go run ./cmd/caddy run.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/chatgateway/caddy-chat-gateway"
)

func main() {
	caddycmd.Main()
}
