package main

import (
	"os"

	openapi_v2 "github.com/google/gnostic-models/openapiv2"
	"google.golang.org/protobuf/proto"
)

func main() {
	b, err := os.ReadFile("swagger.pb")
	if err != nil {
		panic(err)
	}
	var doc openapi_v2.Document
	if err := proto.Unmarshal(b, &doc); err != nil {
		panic(err)
	}
	y, err := doc.YAMLValue("")
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(y)
}
