package engine

import (
	"context"
	"fmt"
)

// LayerSizes is how big each layer of image id is (base first, one per
// diff ID), read from its history, for estimating a transfer before it
// starts. The history does not say which of its steps made no layer, so
// it counts the steps that added bytes as the top layers: for any top part
// of the image the sum is exact, or an overestimate when a layer is empty.
func (e *Engine) LayerSizes(ctx context.Context, id string) ([]int64, error) {
	img, err := e.Image(ctx, id)
	if err != nil {
		return nil, err
	}
	hist, err := e.api.ImageHistory(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("history of image %s: %w", id, err)
	}
	sizes := make([]int64, len(img.Layers))
	i := len(sizes) - 1
	for _, h := range hist { // newest first
		if h.Size <= 0 {
			continue
		}
		if i < 0 {
			return nil, fmt.Errorf("history of image %s: more steps with files than its %d layers", id, len(img.Layers))
		}
		sizes[i] = h.Size
		i--
	}
	return sizes, nil
}
