import CnnLayers
import CnnDistributed

// Synchronized BatchNorm: the layers call a StatisticsReducer; the
// communicator's non-throwing allreducer is one.
extension StatisticsAllreducer: StatisticsReducer {}
