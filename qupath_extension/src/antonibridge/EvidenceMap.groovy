package antonibridge

/**
 * An `explain` job's result (docs/protocol.md, `explain`) as the panel shows and keeps it: tiles with their value
 * and colour, a one-line summary with the faithfulness figure, and a compact JSON saved with the answer. Also, by
 * `zeroShot`, one label of Prism's zero-shot map, drawn the same way in a class of its own. Nothing of QuPath here:
 * QuPathGlue turns the tiles into QuPath objects.
 */
class EvidenceMap {
    static final String CLASS_NAME = 'ANTONI evidence' // the tiles' class: hidden or deleted in one click
    static final String MEASUREMENT = 'ANTONI evidence' // QuPath's Measure > Show measurement maps can recolour it
    static final String ZERO_SHOT_CLASS = 'Prism zero-shot' // a zero-shot map's tiles; measurement "CLASS: label"
    // ColorBrewer's YlOrRd, light to dark: more evidence is darker red; negative evidence (the answer became
    // likelier without the tiles) is blue, paler the nearer to zero.
    static final List<List<Integer>> WARM = [[255, 255, 178], [254, 204, 92], [253, 141, 60], [240, 59, 32],
                                             [189, 0, 38]]
    static final List<Integer> COLD = [49, 130, 189]

    final Map done
    final String className // the tiles' class
    final String measurement // the tiles' measurement
    private final Double fullScale // the colour map's full scale; null: the largest |value|

    EvidenceMap(Map done) {
        this(done, CLASS_NAME, MEASUREMENT, null)
    }

    private EvidenceMap(Map done, String className, String measurement, Double fullScale) {
        this.done = done
        this.className = className
        this.measurement = measurement
        this.fullScale = fullScale
    }

    /**
     * One label of a `zero_shot` done's `map` (docs/protocol.md, ZeroShotMap): each tile's value is its group's
     * probability of `labels[label]`, coloured on a full scale of 1 (so the labels' maps compare), in the class
     * `Prism zero-shot` with the measurement `Prism zero-shot: LABEL`.
     */
    static EvidenceMap zeroShot(Map map, List<String> labels, int label) {
        List probabilities = map.probabilities as List
        List values = (map.group_of as List).collect { (probabilities[it as int] as List)[label] as double }
        Map done = [tiles: map.tiles, groups: map.groups, tile_size: map.tile_size, coords: map.coords, values: values]
        return new EvidenceMap(done, ZERO_SHOT_CLASS, "${ZERO_SHOT_CLASS}: ${labels[label]}".toString(), 1d)
    }

    /** Each tile as [x, y, size, value], level-0 pixels from the top-left of the slide. */
    List<List<Number>> tiles() {
        List coords = done.coords as List
        List values = done.values as List
        double size = done.tile_size as double
        (0..<coords.size()).collect { int i ->
            [coords[i][0] as double, coords[i][1] as double, size, values[i] as double]
        }
    }

    /** The colour map's full scale: the largest |value| (1 when every value is 0), or 1 for a zero-shot map. */
    double scale() {
        if (fullScale != null) {
            return fullScale
        }
        double largest = (done.values as List).collect { Math.abs(it as double) }.max() ?: 0d
        return largest > 0 ? largest : 1d
    }

    /** [r, g, b] of a value on the map: 0 is pale yellow, `scale` dark red, `-scale` blue. */
    static List<Integer> colour(double value, double scale) {
        double t = Math.max(-1d, Math.min(1d, value / scale))
        if (t < 0) {
            return (0..2).collect { int c -> mix(WARM[0][c], COLD[c], -t) }
        }
        double position = t * (WARM.size() - 1)
        int low = Math.min((int) position, WARM.size() - 2)
        return (0..2).collect { int c -> mix(WARM[low][c], WARM[low + 1][c], position - low) }
    }

    private static int mix(int from, int to, double share) {
        (int) Math.round(from + (to - from) * share)
    }

    /** What the panel says of the map: its method, its size and how faithful it is for this answer. */
    String summary() {
        String method = done.method == 'attention' ? 'attention preview (quick, not a faithful map)' :
                'occlusion map'
        String text = "${method} over ${done.groups as long} groups of ${done.tiles as long} tiles"
        Map faithfulness = done.faithfulness as Map
        if (faithfulness) {
            text += String.format('; faithfulness: deletion %.3f against %.3f for %d random orders, gap %.3f ' +
                    '(near 0 or below: do not trust this map)',
                    faithfulness.deletion_area as double, faithfulness.random_area as double,
                    faithfulness.random_orders as int, faithfulness.gap as double)
        }
        return text
    }

    /** The map as saved with the answer: what it needs to be drawn again, values to 6 decimals. */
    String toJson() {
        Map kept = done.subMap(['method', 'tiles', 'groups', 'tile_size', 'coords', 'faithfulness', 'reliance',
                                'refined'])
        kept.values = (done.values as List).collect { Math.round((it as double) * 1e6) / 1e6 }
        return Protocol.toJson(kept)
    }
}
