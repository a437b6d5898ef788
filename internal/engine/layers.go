package engine

import (
	"context"
	"fmt"
)

// LayerSizes is how big each of the n layers of image id is (base first,
// one per diff ID), read from its history, for estimating a transfer
// before it starts. The history does not say which of its steps made no
// layer, so it counts the steps that added bytes as the top layers: for
// any top part of the image the sum is exact, or an overestimate when a
// layer is empty.
func (e *Engine) LayerSizes(ctx context.Context, id string, n int) ([]int64, error) {
	steps, err := e.History(ctx, id)
	if err != nil {
		return nil, err
	}
	sizes := make([]int64, n)
	i := n - 1
	for j := len(steps) - 1; j >= 0; j-- { // newest first
		if steps[j].Size <= 0 {
			continue
		}
		if i < 0 {
			return nil, fmt.Errorf("history of image %s: more steps with files than its %d layers", id, n)
		}
		sizes[i] = steps[j].Size
		i--
	}
	return sizes, nil
}
