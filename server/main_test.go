package server

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/hallmark-dev/hallmark/internal/peercred"
	serverv1 "github.com/hallmark-dev/hallmark/proto/hallmark/server/v1"
	"github.com/hallmark-dev/hallmark/test/pgtest"
)

// adminCallerEnv makes the test binary a caller of the admin socket that
// the variable names (callAdmin), started as another user by a test.
const adminCallerEnv = "HALLMARK_SERVER_TEST_ADMIN_CALLER"

// TestMain shares one private PostgreSQL server among the tests that ask
// for one (pgtest.NewSchema); none starts unless one does.
func TestMain(m *testing.M) {
	if socket := os.Getenv(adminCallerEnv); socket != "" {
		callAdmin(socket)
		os.Exit(0)
	}
	pgtest.Main(m)
}

// callAdmin asks the admin API at socket for its status and prints the
// gRPC code it got, and its message.
func callAdmin(socket string) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(peercred.Credentials()))
	if err != nil {
		fmt.Println("client:", err)
		return
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = serverv1.NewAdminServiceClient(conn).GetStatus(ctx, &serverv1.GetStatusRequest{})
	st := status.Convert(err)
	fmt.Printf("%s: %s\n", st.Code(), st.Message())
}
