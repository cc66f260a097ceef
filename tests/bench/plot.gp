# gnuplot script for the meshgate benchmark: requests/s and p99 latency per contender,
# clustered by payload size. Called by bench.py as
#   gnuplot -e "datafile='latest.dat'; outfile='latest.png'; plottitle='...'" plot.gp
# datafile columns: contender rps_small rps_big p99_small_ms p99_big_ms
if (!exists("datafile")) datafile = 'results/latest.dat'
if (!exists("outfile")) outfile = 'results/latest.png'
if (!exists("plottitle")) plottitle = 'meshgate benchmark'

set terminal pngcairo size 1400,560 font "sans,10"
set output outfile
set multiplot layout 1,2 title plottitle
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set xtics rotate by -25 scale 0
set yrange [0:*]

set title "requests/s (closed loop, median)"
set ylabel "req/s"
plot datafile using 2:xtic(1) title "100 B", '' using 3 title "16 KiB"

set title "p99 latency (closed loop, median)"
set ylabel "ms"
plot datafile using 4:xtic(1) title "100 B", '' using 5 title "16 KiB"
unset multiplot
