package outbox

import (
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// jsonFrame is a record framed as before appendRecord, with json.Marshal.
func jsonFrame(t testing.TB, rec record) []byte {
	body, err := json.Marshal(rec)
	require.NoError(t, err)
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(body)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(body, crcTable))
	return append(b, body...)
}

func requireSameRecord(t testing.TB, rec record) {
	want, err := json.Marshal(rec)
	require.NoError(t, err)
	got := appendRecord(nil, rec)
	require.True(t, json.Valid(got), "%s", got)
	var w, g record
	require.NoError(t, json.Unmarshal(want, &w))
	require.NoError(t, json.Unmarshal(got, &g))
	require.Equal(t, w, g, "json.Marshal %s\nappendRecord %s", want, got)
	var wm, gm map[string]any // the same members, null included
	require.NoError(t, json.Unmarshal(want, &wm))
	require.NoError(t, json.Unmarshal(got, &gm))
	require.Equal(t, wm, gm)
}

func TestAppendRecordReadsAsJSONMarshal(t *testing.T) {
	for name, rec := range map[string]record{
		"put":           {Op: "put", Item: &Item{ID: "0123abcd", Bundle: []byte(`{"a":1}`), Certificate: []byte{0, 1, 2, 0xff}, Created: 1700000000}},
		"put all":       {Op: "put", Item: &Item{ID: "x", Bundle: []byte("b"), Envelope: []byte("e"), Certificate: []byte("c"), Created: -1}},
		"put empty":     {Op: "put", Item: &Item{Bundle: []byte{}, Envelope: []byte{}}},
		"logged":        {Op: "logged", ID: "0123abcd", Logged: []byte(`{"tlogEntries":[]}`), At: 1700000001},
		"refused":       {Op: "refused", ID: "0123abcd", Reason: `bad "sig" \ <script>&` + "\n\t\x00é\xff", At: 5},
		"empty":         {},
		"odd id":        {Op: "logged", ID: "\u2028\x7f", Logged: []byte{}},
		"reason ascii":  {Op: "refused", ID: "i", Reason: "unknown root: x509: certificate signed by unknown authority"},
		"op not ascii":  {Op: "pü"},
		"invalid utf-8": {Op: "put", Item: &Item{ID: "\xc3\x28"}},
	} {
		t.Run(name, func(t *testing.T) { requireSameRecord(t, rec) })
	}
}

func FuzzAppendRecord(f *testing.F) {
	f.Add("put", "id", []byte("bundle"), []byte(nil), "", int64(1))
	f.Add("refused", "\"\\", []byte{}, []byte{0xff}, "r\x00\xff", int64(-5))
	f.Fuzz(func(t *testing.T, op, id string, b1, b2 []byte, reason string, n int64) {
		requireSameRecord(t, record{Op: op, Item: &Item{ID: id, Bundle: b1, Envelope: b2, Certificate: b1, Created: n}})
		requireSameRecord(t, record{Op: op, ID: id, Logged: b2, Reason: reason, At: n})
	})
}

// An outbox written before appendRecord, with json.Marshal, opens with
// everything in it.
func TestOpenReadsJSONMarshalRecords(t *testing.T) {
	dir := privateDir(t)
	var file []byte
	for _, rec := range []record{
		{Op: "put", Item: &Item{ID: "a", Bundle: []byte("bundle-a"), Certificate: []byte("cert"), Created: 1}},
		{Op: "put", Item: &Item{ID: "b", Bundle: []byte("bundle-b"), Envelope: []byte("env-b"), Certificate: []byte("cert"), Created: 2}},
		{Op: "put", Item: &Item{ID: "c", Bundle: []byte("bundle-c"), Certificate: []byte("cert"), Created: 3}},
		{Op: "logged", ID: "a", Logged: []byte(`{"logIndex":"1"}`), At: 4},
		{Op: "refused", ID: "b", Reason: "<unknown> \"root\"", At: 4},
	} {
		file = append(file, jsonFrame(t, rec)...)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "outbox.log"), file, 0o600))
	o, err := Open(dir, Options{Retention: 1 << 62})
	require.NoError(t, err)
	a, ok := mustGet(t, o, "a")
	require.True(t, ok)
	require.Equal(t, Logged, a.State)
	require.Equal(t, `{"logIndex":"1"}`, string(a.Logged))
	require.Equal(t, []byte("bundle-a"), a.Bundle)
	b, _ := mustGet(t, o, "b")
	require.Equal(t, Refused, b.State)
	require.Equal(t, "<unknown> \"root\"", b.Reason)
	pending := o.Pending(10)
	require.Len(t, pending, 1)
	require.Equal(t, "c", pending[0].ID)
	require.Nil(t, pending[0].Envelope)
	require.Equal(t, []byte("cert"), pending[0].Certificate)

	// Rewritten by Open with appendRecord, and read back the same.
	require.NoError(t, o.Put(Item{ID: "d", Bundle: []byte("bundle-d")}))
	require.NoError(t, o.Close())
	o, err = Open(dir, Options{Retention: 1 << 62})
	require.NoError(t, err)
	defer o.Close()
	a2, _ := mustGet(t, o, "a")
	require.Equal(t, a, a2)
	b2, _ := mustGet(t, o, "b")
	require.Equal(t, b, b2)
	pending = o.Pending(10)
	require.Len(t, pending, 2)
	require.Equal(t, []string{"c", "d"}, []string{pending[0].ID, pending[1].ID})
}
