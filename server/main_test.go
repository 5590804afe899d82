package server

import (
	"testing"

	"github.com/hallmark-dev/hallmark/test/pgtest"
)

// TestMain shares one private PostgreSQL server among the tests that ask
// for one (pgtest.NewSchema); none starts unless one does.
func TestMain(m *testing.M) { pgtest.Main(m) }
